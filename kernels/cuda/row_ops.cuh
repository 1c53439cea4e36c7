// Per-row helpers of the one-thread-per-row neighbour-list kernels: a row's scratch lives in
// local memory (k <= kMaxListK), so an O(k^2) insertion sort is cheap and branch-light. Host and
// device functions, so that tests/cuda_rows_host.cpp can run the same row code on the CPU.
#pragma once
#include <cstdint>

#include "../../csrc/common/myers.h"  // PF_HOST_DEVICE

namespace pf {
namespace cuda {

#ifdef __CUDACC__
__device__ __forceinline__ int64_t row_id() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
#endif

// Sort (key, val) pairs by key, ascending; equal keys keep their order.
template <typename K, typename V>
PF_HOST_DEVICE void sort_by_key(K* key, V* val, int n) {
  for (int i = 1; i < n; ++i) {
    const K kv = key[i];
    const V vv = val[i];
    int j = i - 1;
    while (j >= 0 && key[j] > kv) {
      key[j + 1] = key[j];
      val[j + 1] = val[j];
      --j;
    }
    key[j + 1] = kv;
    val[j + 1] = vv;
  }
}

// First index in sorted key[0..n) whose key is >= value.
template <typename K>
PF_HOST_DEVICE int64_t lower_bound(const K* key, int64_t n, K value) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (key[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Row `row` of an N x k list as (neighbour, position) pairs sorted by neighbour.
PF_HOST_DEVICE inline void load_sorted_row(const int64_t* lists, int64_t row, int k, int64_t* key,
                                           int32_t* pos) {
  for (int p = 0; p < k; ++p) {
    key[p] = lists[row * k + p];
    pos[p] = p;
  }
  sort_by_key(key, pos, k);
}

// Position of `value` in a row loaded by load_sorted_row, or -1.
PF_HOST_DEVICE inline int find_position(const int64_t* key, const int32_t* pos, int n, int64_t value) {
  const int64_t lo = lower_bound(key, n, value);
  return (lo < n && key[lo] == value) ? pos[lo] : -1;
}

}  // namespace cuda
}  // namespace pf
