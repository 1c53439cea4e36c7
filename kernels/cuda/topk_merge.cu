// k-selection merge on the GPU: the best k of m candidates per row (partial top-k lists of
// tiles or shards laid side by side), larger first, ties to the smaller index.
#include <cuda/std/limits>

#include "neighbor_lists.cuh"
#include "row_ops.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ bool better(T v, int64_t i, T w, int64_t j) {
  return v > w || (v == w && i < j);
}

// One thread per row keeps its best k sorted in local memory and inserts each candidate that
// beats the current k-th: O(m) compares plus O(k) per accepted candidate.
template <typename T>
__global__ void topk_merge_kernel(const T* __restrict__ values, const int64_t* __restrict__ indices,
                                  int64_t n, int64_t m, int k, T* __restrict__ out_values,
                                  int64_t* __restrict__ out_indices) {
  const int64_t row = row_id();
  if (row >= n) return;
  T best_v[kMaxListK];
  int64_t best_i[kMaxListK];
  int filled = 0;
  for (int64_t c = 0; c < m; ++c) {
    const T v = values[row * m + c];
    const int64_t ix = indices[row * m + c];
    if (ix < 0) continue;  // an empty slot of a partial list
    if (filled == k && !better(v, ix, best_v[k - 1], best_i[k - 1])) continue;
    int p = filled < k ? filled++ : k - 1;
    while (p > 0 && better(v, ix, best_v[p - 1], best_i[p - 1])) {
      best_v[p] = best_v[p - 1];
      best_i[p] = best_i[p - 1];
      --p;
    }
    best_v[p] = v;
    best_i[p] = ix;
  }
  for (int t = 0; t < k; ++t) {
    out_values[row * k + t] = t < filled ? best_v[t] : -::cuda::std::numeric_limits<T>::infinity();
    out_indices[row * k + t] = t < filled ? best_i[t] : -1;
  }
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
