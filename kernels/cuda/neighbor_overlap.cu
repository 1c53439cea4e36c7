#include "neighbor_overlap.cuh"
#include "list_rows.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // one warp per row, 8 warps per block

// One warp per row: lane q holds B(i)[q], B(i)[q+32], ...; every lane scans A(i), so the
// row is read once from global memory and the k x k compare is spread over 32 lanes.
__global__ void mutual_overlap_kernel(const int64_t* __restrict__ a,
                                      const int64_t* __restrict__ b, int64_t n, int64_t k,
                                      int64_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;
  int64_t hits = overlap_row(a + row * k, b + row * k, k, lane, kWarp);
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    hits += __shfl_down_sync(0xffffffffu, hits, offset);
  if (lane == 0) out[row] = hits;
}

}  // namespace

cudaError_t launch_mutual_overlap(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                                  int64_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  mutual_overlap_kernel<<<static_cast<unsigned>(blocks), kRowsPerBlock * kWarp, 0, stream>>>(
      a, b, n, k, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pf
