// Neighbour-list metrics on the GPU: cycle hits, LCS lengths and Levenshtein distances per row
// of two N x k int64 lists, the same algorithms as csrc/cpu/neighbor_lists.cpp (sorted copies +
// binary search; LCS as a longest increasing subsequence; Myers' bit-parallel edit distance),
// one thread per row with the row's scratch in local memory (k <= kMaxListK).
#include "neighbor_lists.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ int64_t row_id() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// Insertion sort of (key, pos) pairs by key: k <= 128, so O(k^2) per row is cheap.
__device__ void sort_pairs(int64_t* key, int32_t* pos, int n) {
  for (int i = 1; i < n; ++i) {
    const int64_t kv = key[i];
    const int32_t pv = pos[i];
    int j = i - 1;
    while (j >= 0 && key[j] > kv) {
      key[j + 1] = key[j];
      pos[j + 1] = pos[j];
      --j;
    }
    key[j + 1] = kv;
    pos[j + 1] = pv;
  }
}

// Position of `value` in a row sorted by key, or -1.
__device__ int find_position(const int64_t* key, const int32_t* pos, int n, int64_t value) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (key[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return (lo < n && key[lo] == value) ? pos[lo] : -1;
}

__device__ bool sorted_contains(const int64_t* row, int n, int64_t value) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (row[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && row[lo] == value;
}

__global__ void sort_rows_kernel(const int64_t* __restrict__ a, int64_t n, int k,
                                 int64_t* __restrict__ sorted) {
  const int64_t row = row_id();
  if (row >= n) return;
  int64_t key[kMaxListK];
  int32_t pos[kMaxListK];
  for (int p = 0; p < k; ++p) {
    key[p] = a[row * k + p];
    pos[p] = p;
  }
  sort_pairs(key, pos, k);
  for (int p = 0; p < k; ++p) sorted[row * k + p] = key[p];
}

__global__ void cycle_kernel(const int64_t* __restrict__ sorted_a, const int64_t* __restrict__ b,
                             int64_t n, int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row >= n) return;
  int64_t hit = 0;
  for (int q = 0; q < k && !hit; ++q) hit = sorted_contains(sorted_a + b[row * k + q] * k, k, row);
  out[row] = hit;
}

__global__ void lcs_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b, int64_t n,
                           int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row >= n) return;
  int64_t key[kMaxListK];
  int32_t pos[kMaxListK];
  int32_t tails[kMaxListK];
  for (int p = 0; p < k; ++p) {
    key[p] = a[row * k + p];
    pos[p] = p;
  }
  sort_pairs(key, pos, k);
  int len = 0;
  for (int q = 0; q < k; ++q) {
    const int p = find_position(key, pos, k, b[row * k + q]);
    if (p < 0) continue;
    int lo = 0, hi = len;  // first tail >= p
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (tails[mid] < p) lo = mid + 1;
      else hi = mid;
    }
    tails[lo] = p;
    if (lo == len) ++len;
  }
  out[row] = len;
}

__global__ void edit_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b,
                            int64_t n, int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row >= n) return;
  int64_t key[kMaxListK];
  int32_t pos[kMaxListK];
  for (int p = 0; p < k; ++p) {
    key[p] = a[row * k + p];
    pos[p] = p;
  }
  sort_pairs(key, pos, k);
  constexpr int kWords = (kMaxListK + 63) / 64;
  const int words = (k + 63) / 64;
  const uint64_t last_high = uint64_t{1} << ((k - 1) % 64);
  uint64_t pv[kWords], mv[kWords];
  for (int w = 0; w < kWords; ++w) {
    pv[w] = ~uint64_t{0};
    mv[w] = 0;
  }
  int64_t score = k;
  for (int t = 0; t < k; ++t) {
    const int p = find_position(key, pos, k, b[row * k + t]);
    int hin = 1;  // global distance: the top boundary row grows by one per column
    for (int w = 0; w < words; ++w) {
      const uint64_t high = (w == words - 1) ? last_high : (uint64_t{1} << 63);
      uint64_t eq = (p >= 0 && p / 64 == w) ? (uint64_t{1} << (p % 64)) : 0;
      const uint64_t pw = pv[w], mw = mv[w];
      const uint64_t xv = eq | mw;
      if (hin < 0) eq |= 1;
      const uint64_t xh = (((eq & pw) + pw) ^ pw) | eq;
      uint64_t ph = mw | ~(xh | pw);
      uint64_t mh = pw & xh;
      int hout = 0;
      if (ph & high) hout = 1;
      else if (mh & high) hout = -1;
      ph <<= 1;
      mh <<= 1;
      if (hin < 0) mh |= 1;
      else if (hin > 0) ph |= 1;
      pv[w] = mh | ~(xv | ph);
      mv[w] = ph & xv;
      hin = hout;
    }
    score += hin;
  }
  out[row] = score;
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t launch_cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                              int64_t* scratch, int64_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  sort_rows_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, n, static_cast<int>(k), scratch);
  cycle_kernel<<<blocks_for(n), kThreads, 0, stream>>>(scratch, b, n, static_cast<int>(k), out);
  return cudaGetLastError();
}

cudaError_t launch_lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                               int64_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  lcs_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, n, static_cast<int>(k), out);
  return cudaGetLastError();
}

cudaError_t launch_edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                                  int64_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  edit_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, n, static_cast<int>(k), out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pf
