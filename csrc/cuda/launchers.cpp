// Host side of the CUDA kernels: takes raw device pointers and a stream handle from Python,
// turns CUDA errors into exceptions. Compiled only when the build found nvcc.
#include "launchers.h"

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "../../kernels/cuda/neighbor_lists.cuh"
#include "../../kernels/cuda/neighbor_overlap.cuh"

namespace pf {

namespace {
void throw_on_error(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace

std::string cuda_runtime_status(int* device_count) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    *device_count = 0;
    return cudaGetErrorString(err);
  }
  *device_count = count;
  return "ok";
}

void mutual_overlap_cuda(uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t out,
                         uintptr_t stream) {
  throw_on_error(cuda::launch_mutual_overlap(reinterpret_cast<const int64_t*>(a),
                                             reinterpret_cast<const int64_t*>(b), n, k,
                                             reinterpret_cast<int64_t*>(out),
                                             reinterpret_cast<cudaStream_t>(stream)),
                 "mutual_overlap_cuda");
}

void neighbor_list_cuda(const std::string& op, uintptr_t a, uintptr_t b, int64_t n, int64_t k,
                        uintptr_t scratch, uintptr_t out, uintptr_t stream) {
  const auto* pa = reinterpret_cast<const int64_t*>(a);
  const auto* pb = reinterpret_cast<const int64_t*>(b);
  auto* po = reinterpret_cast<int64_t*>(out);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  cudaError_t err;
  if (op == "cycle_hits")
    err = cuda::launch_cycle_hits(pa, pb, n, k, reinterpret_cast<int64_t*>(scratch), po, st);
  else if (op == "lcs_lengths")
    err = cuda::launch_lcs_lengths(pa, pb, n, k, po, st);
  else if (op == "edit_distances")
    err = cuda::launch_edit_distances(pa, pb, n, k, po, st);
  else
    throw std::invalid_argument("unknown neighbour-list op " + op);
  throw_on_error(err, op.c_str());
}

size_t masked_kernel_sums_workspace_cuda(int64_t n, int64_t k) {
  return cuda::masked_kernel_sums_workspace(n, k);
}

void masked_kernel_sums_cuda(uintptr_t idx_k, uintptr_t val_k, uintptr_t idx_l, uintptr_t val_l,
                             int64_t n, int64_t k, bool zero_diagonal, bool is_double,
                             uintptr_t work, uintptr_t out6, uintptr_t stream) {
  const auto* ik = reinterpret_cast<const int64_t*>(idx_k);
  const auto* il = reinterpret_cast<const int64_t*>(idx_l);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  auto* w = reinterpret_cast<void*>(work);
  auto* o = reinterpret_cast<double*>(out6);
  const cudaError_t err =
      is_double ? cuda::launch_masked_kernel_sums<double>(ik, reinterpret_cast<const double*>(val_k), il,
                                                          reinterpret_cast<const double*>(val_l), n, k,
                                                          zero_diagonal, w, o, st)
                : cuda::launch_masked_kernel_sums<float>(ik, reinterpret_cast<const float*>(val_k), il,
                                                         reinterpret_cast<const float*>(val_l), n, k,
                                                         zero_diagonal, w, o, st);
  throw_on_error(err, "masked_kernel_sums_cuda");
}

void topk_merge_cuda(uintptr_t values, uintptr_t indices, int64_t n, int64_t m, int64_t k,
                     uintptr_t out_values, uintptr_t out_indices, bool is_double, uintptr_t stream) {
  const auto* ix = reinterpret_cast<const int64_t*>(indices);
  auto* oi = reinterpret_cast<int64_t*>(out_indices);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const cudaError_t err =
      is_double ? cuda::launch_topk_merge<double>(reinterpret_cast<const double*>(values), ix, n, m, k,
                                                  reinterpret_cast<double*>(out_values), oi, st)
                : cuda::launch_topk_merge<float>(reinterpret_cast<const float*>(values), ix, n, m, k,
                                                 reinterpret_cast<float*>(out_values), oi, st);
  throw_on_error(err, "topk_merge_cuda");
}

int max_list_k_cuda() { return cuda::kMaxListK; }

}  // namespace pf
