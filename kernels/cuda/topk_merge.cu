// The topk_merge op on the GPU, a k-selection merge: the best k of m candidates per row
// (partial top-k lists of tiles or shards laid side by side), larger first, ties to the
// smaller index.
#include "topk_merge.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

// One thread per row (topk_merge_row in list_rows.cuh).
template <typename T>
__global__ void topk_merge_kernel(const T* __restrict__ values, const int64_t* __restrict__ indices,
                                  int64_t n, int64_t m, int k, T* __restrict__ out_values,
                                  int64_t* __restrict__ out_indices) {
  const int64_t row = row_id();
  if (row < n) topk_merge_row(values, indices, row, m, k, out_values, out_indices);
}

}  // namespace

template <typename T>
cudaError_t launch_topk_merge(const T* values, const int64_t* indices, int64_t n, int64_t m,
                              int64_t k, T* out_values, int64_t* out_indices, cudaStream_t stream) {
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  topk_merge_kernel<T><<<blocks, kThreads, 0, stream>>>(values, indices, n, m, static_cast<int>(k),
                                                        out_values, out_indices);
  return cudaGetLastError();
}

template cudaError_t launch_topk_merge<float>(const float*, const int64_t*, int64_t, int64_t, int64_t,
                                              float*, int64_t*, cudaStream_t);
template cudaError_t launch_topk_merge<double>(const double*, const int64_t*, int64_t, int64_t, int64_t,
                                               double*, int64_t*, cudaStream_t);

}  // namespace cuda
}  // namespace pf
