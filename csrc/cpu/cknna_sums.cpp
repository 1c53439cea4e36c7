#include "cknna_sums.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "../common/parallel.h"

namespace pf {

void CknnaWork::resize(int64_t n, int64_t k) {
  const auto nk = static_cast<size_t>(n * k), un = static_cast<size_t>(n);
  count.resize(un);
  cols.resize(nk);
  kv.resize(nk);
  lv.resize(nk);
  row_k.resize(un);
  row_l.resize(un);
  col_k.resize(un);
  col_l.resize(un);
}

template <typename T>
void cknna_sort_rows(const int64_t* idx, const T* val, int64_t n, int64_t k, int64_t* cols, T* vals) {
#pragma omp parallel if (n * k > kParallelGrain)
  {
    std::vector<int64_t> order(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* ri = idx + i * k;
      std::iota(order.begin(), order.end(), int64_t{0});
      std::sort(order.begin(), order.end(), [ri](int64_t a, int64_t b) { return ri[a] < ri[b]; });
      for (int64_t p = 0; p < k; ++p) {
        cols[i * k + p] = ri[order[p]];
        vals[i * k + p] = val[i * k + order[p]];
      }
    }
  }
}

template <typename T>
CknnaSums cknna_sums_sorted(const int64_t* cols_k, const T* vals_k, const int64_t* cols_l, const T* vals_l,
                            int64_t n, int64_t k, bool zero_diagonal, CknnaWork& w, bool parallel) {
  // 1. The mask, row by row sorted by column: row i holds (j, K_ij, L_ij) for j in both sets,
  // at [i*k, i*k + count[i]).
  const bool par = parallel && n * k > kParallelGrain;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t *ck = cols_k + i * k, *cl = cols_l + i * k;
    int64_t c = 0, p = 0, q = 0;
    while (p < k && q < k) {
      if (ck[p] < cl[q]) ++p;
      else if (cl[q] < ck[p]) ++q;
      else {
        if (!(zero_diagonal && ck[p] == i)) {
          w.cols[i * k + c] = ck[p];
          w.kv[i * k + c] = static_cast<double>(vals_k[i * k + p]);
          w.lv[i * k + c] = static_cast<double>(vals_l[i * k + q]);
          ++c;
        }
        ++p;
        ++q;
      }
    }
    w.count[i] = c;
  }

  // 2. Sums. The transpose term looks i up in row j (sorted) by binary search.
  double trace_kl = 0, sum_k = 0, sum_l = 0, mask_count = 0;
#pragma omp parallel for schedule(static) reduction(+ : trace_kl, sum_k, sum_l, mask_count) if (par)
  for (int64_t i = 0; i < n; ++i) {
    double rk = 0, rl = 0;
    for (int64_t t = 0; t < w.count[i]; ++t) {
      const int64_t j = w.cols[i * k + t];
      rk += w.kv[i * k + t];
      rl += w.lv[i * k + t];
      auto first = w.cols.begin() + j * k;
      auto last = first + w.count[j];
      auto it = std::lower_bound(first, last, i);
      if (it != last && *it == i) trace_kl += w.kv[i * k + t] * w.lv[j * k + (it - first)];
    }
    w.row_k[i] = rk;
    w.row_l[i] = rl;
    sum_k += rk;
    sum_l += rl;
    mask_count += static_cast<double>(w.count[i]);
  }
  // Column sums by scatter: serial, it is O(N k) and avoids per-thread N-sized buffers.
  std::fill(w.col_k.begin(), w.col_k.begin() + n, 0.0);
  std::fill(w.col_l.begin(), w.col_l.begin() + n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < w.count[i]; ++t) {
      w.col_k[w.cols[i * k + t]] += w.kv[i * k + t];
      w.col_l[w.cols[i * k + t]] += w.lv[i * k + t];
    }
  }
  CknnaSums s;
  for (int64_t m = 0; m < n; ++m) {
    s.k_then_l += w.col_k[m] * w.row_l[m];
    s.l_then_k += w.col_l[m] * w.row_k[m];
  }
  s.trace_kl = trace_kl;
  s.sum_k = sum_k;
  s.sum_l = sum_l;
  s.mask_count = mask_count;
  return s;
}

template <typename T>
CknnaSums cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l, const T* val_l,
                     int64_t n, int64_t k, bool zero_diagonal) {
  std::vector<int64_t> ck(static_cast<size_t>(n * k)), cl(static_cast<size_t>(n * k));
  std::vector<T> vk(static_cast<size_t>(n * k)), vl(static_cast<size_t>(n * k));
  cknna_sort_rows(idx_k, val_k, n, k, ck.data(), vk.data());
  cknna_sort_rows(idx_l, val_l, n, k, cl.data(), vl.data());
  CknnaWork w;
  w.resize(n, k);
  return cknna_sums_sorted(ck.data(), vk.data(), cl.data(), vl.data(), n, k, zero_diagonal, w, true);
}

#define PF_CKNNA_INSTANTIATE(T)                                                                      \
  template CknnaSums cknna_sums<T>(const int64_t*, const T*, const int64_t*, const T*, int64_t,     \
                                   int64_t, bool);                                                   \
  template void cknna_sort_rows<T>(const int64_t*, const T*, int64_t, int64_t, int64_t*, T*);      \
  template CknnaSums cknna_sums_sorted<T>(const int64_t*, const T*, const int64_t*, const T*,       \
                                          int64_t, int64_t, bool, CknnaWork&, bool);
PF_CKNNA_INSTANTIATE(float)
PF_CKNNA_INSTANTIATE(double)
#undef PF_CKNNA_INSTANTIATE

}  // namespace pf
