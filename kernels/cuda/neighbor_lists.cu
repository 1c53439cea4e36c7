// Neighbour-list metrics on the GPU: cycle hits, LCS lengths and Levenshtein distances per row
// of two N x k int64 lists, the same algorithms as csrc/cpu/neighbor_lists.cpp (sorted copies +
// binary search; LCS as a longest increasing subsequence; Myers' bit-parallel edit distance),
// one thread per row with the row's scratch in local memory (k <= kMaxListK).
#include "neighbor_lists.cuh"
#include "row_ops.cuh"
#include "../../csrc/common/myers.h"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

__device__ bool sorted_contains(const int64_t* row, int n, int64_t value) {
  const int64_t lo = lower_bound(row, n, value);
  return lo < n && row[lo] == value;
}

__global__ void sort_rows_kernel(const int64_t* __restrict__ a, int64_t n, int k,
                                 int64_t* __restrict__ sorted) {
  const int64_t row = row_id();
  if (row >= n) return;
  int64_t key[kMaxListK];
  int32_t pos[kMaxListK];
  load_sorted_row(a, row, k, key, pos);
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
  load_sorted_row(a, row, k, key, pos);
  int len = 0;
  for (int q = 0; q < k; ++q) {
    const int p = find_position(key, pos, k, b[row * k + q]);
    if (p < 0) continue;
    const int lo = static_cast<int>(lower_bound(tails, len, p));  // first tail >= p
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
  load_sorted_row(a, row, k, key, pos);
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
      hin = myers_block_step(pv[w], mv[w], p, w, high, hin);
    }
    score += hin;
  }
  out[row] = score;
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Checks the sizes the kernels rely on, then launches one thread per row.
template <typename Kernel, typename... Args>
cudaError_t launch_rows(Kernel kernel, int64_t n, int64_t k, cudaStream_t stream, Args... args) {
  if (n <= 0) return cudaSuccess;
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  kernel<<<blocks_for(n), kThreads, 0, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                              int64_t* scratch, int64_t* out, cudaStream_t stream) {
  const int kk = static_cast<int>(k);
  const cudaError_t err = launch_rows(sort_rows_kernel, n, k, stream, a, n, kk, scratch);
  if (err != cudaSuccess) return err;
  return launch_rows(cycle_kernel, n, k, stream, static_cast<const int64_t*>(scratch), b, n, kk, out);
}

cudaError_t launch_lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                               int64_t* out, cudaStream_t stream) {
  return launch_rows(lcs_kernel, n, k, stream, a, b, n, static_cast<int>(k), out);
}

cudaError_t launch_edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                                  int64_t* out, cudaStream_t stream) {
  return launch_rows(edit_kernel, n, k, stream, a, b, n, static_cast<int>(k), out);
}

}  // namespace cuda
}  // namespace pf
