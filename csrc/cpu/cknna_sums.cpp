#include "cknna_sums.h"

#include <algorithm>
#include <vector>

#include "../common/parallel.h"

namespace pf {

namespace {

template <typename T>
struct Entry {
  int64_t col;
  T value;
};

template <typename T>
void sort_row(const int64_t* idx, const T* val, int64_t k, std::vector<Entry<T>>& out) {
  out.resize(static_cast<size_t>(k));
  for (int64_t p = 0; p < k; ++p) out[p] = {idx[p], val[p]};
  std::sort(out.begin(), out.end(), [](const Entry<T>& a, const Entry<T>& b) { return a.col < b.col; });
}

}  // namespace

template <typename T>
CknnaSums cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l, const T* val_l,
                     int64_t n, int64_t k, bool zero_diagonal) {
  // 1. The mask, row by row sorted by column: row i holds (j, K_ij, L_ij) for j in both sets,
  // at [i*k, i*k + count[i]).
  std::vector<int64_t> count(static_cast<size_t>(n), 0);
  std::vector<int64_t> cols(static_cast<size_t>(n * k));
  std::vector<double> kv(static_cast<size_t>(n * k)), lv(static_cast<size_t>(n * k));
#pragma omp parallel if (n * k > kParallelGrain)
  {
    std::vector<Entry<T>> sk, sl;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      sort_row(idx_k + i * k, val_k + i * k, k, sk);
      sort_row(idx_l + i * k, val_l + i * k, k, sl);
      int64_t c = 0;
      size_t p = 0, q = 0;
      while (p < sk.size() && q < sl.size()) {
        if (sk[p].col < sl[q].col) ++p;
        else if (sl[q].col < sk[p].col) ++q;
        else {
          if (!(zero_diagonal && sk[p].col == i)) {
            cols[i * k + c] = sk[p].col;
            kv[i * k + c] = static_cast<double>(sk[p].value);
            lv[i * k + c] = static_cast<double>(sl[q].value);
            ++c;
          }
          ++p;
          ++q;
        }
      }
      count[i] = c;
    }
  }

  // 2. Sums. The transpose term looks i up in row j (sorted) by binary search.
  CknnaSums s;
  std::vector<double> row_k(static_cast<size_t>(n), 0), row_l(static_cast<size_t>(n), 0);
  double trace_kl = 0, sum_k = 0, sum_l = 0, mask_count = 0;
#pragma omp parallel for schedule(static) reduction(+ : trace_kl, sum_k, sum_l, mask_count) \
    if (n * k > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) {
    double rk = 0, rl = 0;
    for (int64_t t = 0; t < count[i]; ++t) {
      const int64_t j = cols[i * k + t];
      rk += kv[i * k + t];
      rl += lv[i * k + t];
      auto first = cols.begin() + j * k;
      auto last = first + count[j];
      auto it = std::lower_bound(first, last, i);
      if (it != last && *it == i) trace_kl += kv[i * k + t] * lv[j * k + (it - first)];
    }
    row_k[i] = rk;
    row_l[i] = rl;
    sum_k += rk;
    sum_l += rl;
    mask_count += static_cast<double>(count[i]);
  }
  // Column sums by scatter: serial, it is O(N k) and avoids per-thread N-sized buffers.
  std::vector<double> col_k(static_cast<size_t>(n), 0), col_l(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < count[i]; ++t) {
      col_k[cols[i * k + t]] += kv[i * k + t];
      col_l[cols[i * k + t]] += lv[i * k + t];
    }
  }
  double k_then_l = 0, l_then_k = 0;
  for (int64_t m = 0; m < n; ++m) {
    k_then_l += col_k[m] * row_l[m];
    l_then_k += col_l[m] * row_k[m];
  }
  s.trace_kl = trace_kl;
  s.sum_k = sum_k;
  s.sum_l = sum_l;
  s.k_then_l = k_then_l;
  s.l_then_k = l_then_k;
  s.mask_count = mask_count;
  return s;
}

template CknnaSums cknna_sums<float>(const int64_t*, const float*, const int64_t*, const float*,
                                     int64_t, int64_t, bool);
template CknnaSums cknna_sums<double>(const int64_t*, const double*, const int64_t*, const double*,
                                      int64_t, int64_t, bool);

}  // namespace pf
