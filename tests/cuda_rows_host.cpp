// The CUDA kernels' per-row bodies (kernels/cuda/list_rows.cuh), run on the CPU with the same
// row -> thread mapping as the kernels, for tests/test_cuda_rows_host.py. C entry points for
// ctypes; the GPU-only parts (warp sums, atomics, launches) are replaced by plain loops.
#include <cstdint>
#include <vector>

#include "kernels/cuda/list_rows.cuh"

using namespace pf::cuda;

// cknna_sums.cu's three kernels in sequence: intersect, row sums, cross sums.
template <typename T>
static void cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l, const T* val_l,
                       int64_t n, int64_t k, bool zero_diagonal, double* out6) {
  const int kk = static_cast<int>(k);
  std::vector<int64_t> cols(static_cast<size_t>(n * k)), count(static_cast<size_t>(n));
  std::vector<double> kv(static_cast<size_t>(n * k)), lv(static_cast<size_t>(n * k));
  std::vector<double> row_k(n), row_l(n), col_k(n, 0.0), col_l(n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    count[i] = intersect_row(idx_k, val_k, idx_l, val_l, i, kk, zero_diagonal, cols.data(), kv.data(), lv.data());
  for (int q = 0; q < 6; ++q) out6[q] = 0;
  for (int64_t i = 0; i < n; ++i) {
    double trace, rk, rl;
    cknna_row_sums(cols.data(), kv.data(), lv.data(), count.data(), i, kk, trace, rk, rl,
                   [&](int64_t j, double a, double l) {
                     col_k[j] += a;
                     col_l[j] += l;
                   });
    row_k[i] = rk;
    row_l[i] = rl;
    out6[0] += trace;
    out6[1] += rk;
    out6[2] += rl;
    out6[5] += static_cast<double>(count[i]);
  }
  for (int64_t m = 0; m < n; ++m) {
    out6[3] += col_k[m] * row_l[m];
    out6[4] += col_l[m] * row_k[m];
  }
}

extern "C" {

int max_list_k() { return kMaxListK; }

void host_mutual_overlap(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  constexpr int kWarp = 32;  // neighbour_lists.cu: one warp per row, lanes split B's positions
  for (int64_t row = 0; row < n; ++row) {
    int64_t hits = 0;
    for (int lane = 0; lane < kWarp; ++lane) hits += overlap_row(a + row * k, b + row * k, k, lane, kWarp);
    out[row] = hits;
  }
}

void host_cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  std::vector<int64_t> sorted(static_cast<size_t>(n * k));
  for (int64_t row = 0; row < n; ++row) sort_row(a, row, static_cast<int>(k), sorted.data());
  for (int64_t row = 0; row < n; ++row) out[row] = cycle_row(sorted.data(), b, row, static_cast<int>(k));
}

void host_lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  for (int64_t row = 0; row < n; ++row) out[row] = lcs_row(a, b, row, static_cast<int>(k));
}

void host_edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  for (int64_t row = 0; row < n; ++row) out[row] = edit_row(a, b, row, static_cast<int>(k));
}

void host_cknna_sums_f32(const int64_t* idx_k, const float* val_k, const int64_t* idx_l, const float* val_l,
                          int64_t n, int64_t k, int zero_diagonal, double* out6) {
  cknna_sums(idx_k, val_k, idx_l, val_l, n, k, zero_diagonal != 0, out6);
}

void host_cknna_sums_f64(const int64_t* idx_k, const double* val_k, const int64_t* idx_l, const double* val_l,
                          int64_t n, int64_t k, int zero_diagonal, double* out6) {
  cknna_sums(idx_k, val_k, idx_l, val_l, n, k, zero_diagonal != 0, out6);
}

void host_topk_merge_f64(const double* values, const int64_t* indices, int64_t n, int64_t m, int64_t k,
                         double* out_values, int64_t* out_indices) {
  for (int64_t row = 0; row < n; ++row)
    topk_merge_row(values, indices, row, m, static_cast<int>(k), out_values, out_indices);
}

}  // extern "C"
