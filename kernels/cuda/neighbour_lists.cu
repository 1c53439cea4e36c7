// The neighbour_lists op on the GPU. mutual_overlap: one warp per row. cycle_hits, lcs_lengths,
// edit_distances: sorted copies + binary search, LCS as a longest increasing subsequence,
// Myers' bit-parallel edit distance, one thread per row with the row's scratch in local memory
// (k <= kMaxListK). The per-row bodies live in list_rows.cuh, shared with
// tests/cuda_rows_host.cpp.
#include "neighbour_lists.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // mutual_overlap: one warp per row, 8 warps per block

// Lane q holds B(i)[q], B(i)[q+32], ...; every lane scans A(i), so the row is read once from
// global memory and the k x k compare is spread over 32 lanes (no local arrays: any k).
__global__ void overlap_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b,
                               int64_t n, int64_t k, int64_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps leave together: kRowsPerBlock rows per block
  int64_t hits = overlap_row(a + row * k, b + row * k, k, lane, kWarp);
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    hits += __shfl_down_sync(0xffffffffu, hits, offset);
  if (lane == 0) out[row] = hits;
}

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

// One thread per row; the sizes were checked by the caller.
template <typename Kernel, typename... Args>
cudaError_t launch_rows(Kernel kernel, int64_t n, cudaStream_t stream, Args... args) {
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  kernel<<<blocks, kThreads, 0, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_neighbour_lists(ListMetric metric, const int64_t* a, const int64_t* b, int64_t n,
                                   int64_t k, int64_t* scratch, int64_t* out, cudaStream_t stream) {
  if (k < 1 || (metric != ListMetric::mutual_overlap && k > kMaxListK)) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  const int kk = static_cast<int>(k);
  switch (metric) {
    case ListMetric::mutual_overlap: {
      const unsigned blocks = static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock);
      overlap_kernel<<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(a, b, n, k, out);
      return cudaGetLastError();
    }
    case ListMetric::cycle_hits: {
      const cudaError_t err = launch_rows(sort_rows_kernel, n, stream, a, n, kk, scratch);
      if (err != cudaSuccess) return err;
      return launch_rows(cycle_kernel, n, stream, static_cast<const int64_t*>(scratch), b, n, kk, out);
    }
    case ListMetric::lcs_lengths:
      return launch_rows(lcs_kernel, n, stream, a, b, n, kk, out);
    case ListMetric::edit_distances:
      return launch_rows(edit_kernel, n, stream, a, b, n, kk, out);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace pf
