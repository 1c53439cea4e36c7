// The permute_lists op on the GPU: a permutation null relabels cached neighbour lists,
// out[i] = π⁻¹(lists[π(i)]), instead of recomputing kNN on permuted features.
#include "permute_lists.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// One thread per list entry: consecutive threads read consecutive entries of one source row.
__global__ void permute_lists_kernel(const int64_t* __restrict__ lists, int64_t n, int64_t k,
                                     const int64_t* __restrict__ perm,
                                     const int64_t* __restrict__ inverse, int64_t* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * k) return;
  const int64_t i = t / k, c = t - i * k;
  out[t] = inverse[lists[perm[i] * k + c]];
}

}  // namespace

cudaError_t launch_permute_lists(const int64_t* lists, int64_t n, int64_t k, const int64_t* perm,
                                 const int64_t* inverse, int64_t* out, cudaStream_t stream) {
  if (n < 0 || k < 1) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t total = n * k;
  const unsigned blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  permute_lists_kernel<<<blocks, kThreads, 0, stream>>>(lists, n, k, perm, inverse, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pf
