// Neighbour-list metrics on the GPU: cycle hits, LCS lengths and Levenshtein distances per row
// of two N x k int64 lists, the same algorithms as csrc/cpu/neighbor_lists.cpp (sorted copies +
// binary search; LCS as a longest increasing subsequence; Myers' bit-parallel edit distance),
// one thread per row with the row's scratch in local memory (k <= kMaxListK). The per-row
// bodies live in list_rows.cuh.
#include "neighbor_lists.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

__global__ void sort_rows_kernel(const int64_t* __restrict__ a, int64_t n, int k,
                                 int64_t* __restrict__ sorted) {
  const int64_t row = row_id();
  if (row < n) sort_row(a, row, k, sorted);
}

__global__ void cycle_kernel(const int64_t* __restrict__ sorted_a, const int64_t* __restrict__ b,
                             int64_t n, int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row < n) out[row] = cycle_row(sorted_a, b, row, k);
}

__global__ void lcs_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b, int64_t n,
                           int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row < n) out[row] = lcs_row(a, b, row, k);
}

__global__ void edit_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b,
                            int64_t n, int k, int64_t* __restrict__ out) {
  const int64_t row = row_id();
  if (row < n) out[row] = edit_row(a, b, row, k);
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
