// The cknna_sums op on the GPU, the algorithm of csrc/cpu/cknna_sums.cpp: per row the intersection
// of the two neighbour sets (sorted by column), then the transpose lookups, row and column sums.
// float64 accumulation with one atomic per warp for the scalars.
#include "cknna_sums.cuh"

namespace pf {
namespace cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Add v to *dst once per warp (lane 0 holds the warp's total).
__device__ __forceinline__ void warp_atomic_add(double* dst, double v) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) atomicAdd(dst, v);
}

template <typename T>
__global__ void intersect_kernel(const int64_t* __restrict__ idx_k, const T* __restrict__ val_k,
                                 const int64_t* __restrict__ idx_l, const T* __restrict__ val_l,
                                 int64_t n, int k, bool zero_diagonal, int64_t* __restrict__ cols,
                                 double* __restrict__ kv, double* __restrict__ lv,
                                 int64_t* __restrict__ count) {
  const int64_t i = row_id();
  if (i < n) count[i] = intersect_row(idx_k, val_k, idx_l, val_l, i, k, zero_diagonal, cols, kv, lv);
}

__global__ void row_sums_kernel(const int64_t* __restrict__ cols, const double* __restrict__ kv,
                                const double* __restrict__ lv, const int64_t* __restrict__ count,
                                int64_t n, int k, double* __restrict__ row_k,
                                double* __restrict__ row_l, double* __restrict__ col_k,
                                double* __restrict__ col_l, double* __restrict__ out6) {
  const int64_t i = row_id();
  double trace = 0, rk = 0, rl = 0, m = 0;
  if (i < n) {  // no early return: every lane takes part in the warp sums below
    cknna_row_sums(cols, kv, lv, count, i, k, trace, rk, rl, [&](int64_t j, double a, double l) {
      atomicAdd(col_k + j, a);
      atomicAdd(col_l + j, l);
    });
    m = static_cast<double>(count[i]);
    row_k[i] = rk;
    row_l[i] = rl;
  }
  warp_atomic_add(out6 + 0, trace);
  warp_atomic_add(out6 + 1, rk);
  warp_atomic_add(out6 + 2, rl);
  warp_atomic_add(out6 + 5, m);
}

__global__ void cross_sums_kernel(const double* __restrict__ row_k, const double* __restrict__ row_l,
                                  const double* __restrict__ col_k, const double* __restrict__ col_l,
                                  int64_t n, double* __restrict__ out6) {
  const int64_t m = row_id();
  double kl = 0, lk = 0;
  if (m < n) {
    kl = col_k[m] * row_l[m];
    lk = col_l[m] * row_k[m];
  }
  warp_atomic_add(out6 + 3, kl);
  warp_atomic_add(out6 + 4, lk);
}

}  // namespace

size_t cknna_sums_workspace(int64_t n, int64_t k) {
  return static_cast<size_t>(n * k) * sizeof(int64_t) + static_cast<size_t>(2 * n * k) * sizeof(double) +
         static_cast<size_t>(4 * n) * sizeof(double) + static_cast<size_t>(n) * sizeof(int64_t);
}

template <typename T>
cudaError_t launch_cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l,
                              const T* val_l, int64_t n, int64_t k, bool zero_diagonal, void* work,
                              double* out6, cudaStream_t stream) {
  if (k < 1 || k > kMaxListK) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(out6, 0, 6 * sizeof(double), stream);
  if (err != cudaSuccess || n <= 0) return err;
  // Workspace layout: cols | kv | lv | row_k | row_l | col_k | col_l | count.
  int64_t* cols = static_cast<int64_t*>(work);
  double* kv = reinterpret_cast<double*>(cols + n * k);
  double* lv = kv + n * k;
  double* row_k = lv + n * k;
  double* row_l = row_k + n;
  double* col_k = row_l + n;
  double* col_l = col_k + n;
  int64_t* count = reinterpret_cast<int64_t*>(col_l + n);
  err = cudaMemsetAsync(col_k, 0, 2 * n * sizeof(double), stream);
  if (err != cudaSuccess) return err;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  const int kk = static_cast<int>(k);
  intersect_kernel<T><<<blocks, kThreads, 0, stream>>>(idx_k, val_k, idx_l, val_l, n, kk, zero_diagonal,
                                                       cols, kv, lv, count);
  row_sums_kernel<<<blocks, kThreads, 0, stream>>>(cols, kv, lv, count, n, kk, row_k, row_l, col_k,
                                                   col_l, out6);
  cross_sums_kernel<<<blocks, kThreads, 0, stream>>>(row_k, row_l, col_k, col_l, n, out6);
  return cudaGetLastError();
}

template cudaError_t launch_cknna_sums<float>(const int64_t*, const float*, const int64_t*,
                                              const float*, int64_t, int64_t, bool, void*, double*,
                                              cudaStream_t);
template cudaError_t launch_cknna_sums<double>(const int64_t*, const double*, const int64_t*,
                                               const double*, int64_t, int64_t, bool, void*, double*,
                                               cudaStream_t);

}  // namespace cuda
}  // namespace pf
