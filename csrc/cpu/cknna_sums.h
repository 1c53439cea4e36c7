// The sparse sums behind CKNNA. With M_ij = 1 when j is in both neighbour sets of i,
// K' = M∘K and L' = M∘L touch only N·k entries, whose kernel values are the kNN scores.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace pf {

struct CknnaSums {
  double trace_kl = 0;  // Σ_ij K'_ij L'_ji
  double sum_k = 0;     // Σ K'
  double sum_l = 0;     // Σ L'
  double k_then_l = 0;  // 1ᵀ K' L' 1 = (column sums of K') · (row sums of L')
  double l_then_k = 0;  // 1ᵀ L' K' 1
  double mask_count = 0;  // Σ M

  // The six sums in their one order, named: the bindings' dict and the permutation null's
  // count x a x b x 6 output are both laid out from here.
  static constexpr int kCount = 6;
  static constexpr const char* kNames[kCount] = {"trace_kl", "sum_k",    "sum_l",
                                                 "k_then_l", "l_then_k", "mask_count"};
  std::array<double, kCount> values() const { return {trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count}; }
};

// Row i: neighbours idx_k[i, :] with kernel values val_k[i, :] (and likewise for L).
// zero_diagonal drops entries j == i (the unbiased estimator works on K̃, L̃).
template <typename T>
CknnaSums cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l, const T* val_l,
                     int64_t n, int64_t k, bool zero_diagonal);

// The two steps of cknna_sums, apart, so that a permutation null sorts each set's rows once
// and reuses the work space.
// 1. Every row's (index, value) entries sorted by index, into cols / vals (N x k).
template <typename T>
void cknna_sort_rows(const int64_t* idx, const T* val, int64_t n, int64_t k, int64_t* cols, T* vals);

// Buffers of the sums step, sized once per thread.
struct CknnaWork {
  std::vector<int64_t> count, cols;
  std::vector<double> kv, lv, row_k, row_l, col_k, col_l;
  void resize(int64_t n, int64_t k);
};

// 2. The sums from rows sorted by cknna_sort_rows (parallel over rows when `parallel`).
template <typename T>
CknnaSums cknna_sums_sorted(const int64_t* cols_k, const T* vals_k, const int64_t* cols_l, const T* vals_l,
                            int64_t n, int64_t k, bool zero_diagonal, CknnaWork& work, bool parallel);

}  // namespace pf
