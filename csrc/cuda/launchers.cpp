// Host side of the CUDA kernels: takes raw device pointers and a stream handle from Python,
// turns CUDA errors into exceptions. Compiled only when the build found nvcc.
#include "launchers.h"

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

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

}  // namespace pf
