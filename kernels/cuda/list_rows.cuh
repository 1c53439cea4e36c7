// The per-row work of every CUDA neighbour-list kernel, as host + device functions: the
// kernels in this folder are thin wrappers (which thread takes which row, atomics, warp sums),
// and tests/cuda_rows_host.cpp runs these same bodies on the CPU against the compiled core, so
// the kernels' logic is tested even where no GPU is at hand.
#pragma once
#include <cmath>
#include <cstdint>

#include "row_ops.cuh"

namespace pf {
namespace cuda {

// Rows are processed one per thread with their scratch in local memory: k up to this bound.
constexpr int kMaxListK = 128;

// |A(i) ∩ B(i)| counted over B's positions first, first + step, ... (a warp splits a row).
PF_HOST_DEVICE inline int64_t overlap_row(const int64_t* ra, const int64_t* rb, int64_t k, int64_t first,
                                          int64_t step) {
  int64_t hits = 0;
  for (int64_t q = first; q < k; q += step) {
    const int64_t v = rb[q];
    for (int64_t p = 0; p < k; ++p) hits += (ra[p] == v);
  }
  return hits;
}

// sorted[row] = A(row) in increasing order.
PF_HOST_DEVICE inline void sort_row(const int64_t* a, int64_t row, int k, int64_t* sorted) {
  int64_t key[kMaxListK];
  int32_t pos[kMaxListK];
  load_sorted_row(a, row, k, key, pos);
  for (int p = 0; p < k; ++p) sorted[row * k + p] = key[p];
}

// 1 if row ∈ A(j) for some j ∈ B(row); `sorted_a` holds A's rows sorted (sort_row).
PF_HOST_DEVICE inline int64_t cycle_row(const int64_t* sorted_a, const int64_t* b, int64_t row, int k) {
  for (int q = 0; q < k; ++q) {
    const int64_t* other = sorted_a + b[row * k + q] * k;
    const int64_t lo = lower_bound(other, k, row);
    if (lo < k && other[lo] == row) return 1;
  }
  return 0;
}

// LCS of A(row) and B(row): neighbours are distinct within a row, so it is the longest
// increasing run of A-positions along B (patience sorting, O(k log k)).
PF_HOST_DEVICE inline int64_t lcs_row(const int64_t* a, const int64_t* b, int64_t row, int k) {
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
  return len;
}

// Levenshtein distance of A(row) (the pattern) and B(row) (the text), Myers' bit-parallel
// algorithm over ceil(k / 64) words.
PF_HOST_DEVICE inline int64_t edit_row(const int64_t* a, const int64_t* b, int64_t row, int k) {
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
  return score;
}

// CKNNA mask of row i: the columns in both neighbour lists (minus i itself when
// zero_diagonal), sorted, with their kernel values, written at [i*k, i*k + count). Returns count.
template <typename T>
PF_HOST_DEVICE int intersect_row(const int64_t* idx_k, const T* val_k, const int64_t* idx_l, const T* val_l,
                                 int64_t i, int k, bool zero_diagonal, int64_t* cols, double* kv,
                                 double* lv) {
  int64_t ck[kMaxListK], cl[kMaxListK];
  T vk[kMaxListK], vl[kMaxListK];
  for (int p = 0; p < k; ++p) {
    ck[p] = idx_k[i * k + p];
    vk[p] = val_k[i * k + p];
    cl[p] = idx_l[i * k + p];
    vl[p] = val_l[i * k + p];
  }
  sort_by_key(ck, vk, k);
  sort_by_key(cl, vl, k);
  int c = 0, p = 0, q = 0;
  while (p < k && q < k) {
    if (ck[p] < cl[q]) ++p;
    else if (cl[q] < ck[p]) ++q;
    else {
      if (!(zero_diagonal && ck[p] == i)) {
        cols[i * k + c] = ck[p];
        kv[i * k + c] = static_cast<double>(vk[p]);
        lv[i * k + c] = static_cast<double>(vl[q]);
        ++c;
      }
      ++p;
      ++q;
    }
  }
  return c;
}

// Row i's share of CKNNA's sums over the masks of intersect_row: the trace term
// Σ_j K'_ij L'_ji (binary search of row j), the row sums, and each entry added to its column
// through add_column(j, K'_ij, L'_ij) (an atomic on the GPU).
template <typename AddColumn>
PF_HOST_DEVICE void cknna_row_sums(const int64_t* cols, const double* kv, const double* lv,
                                   const int64_t* count, int64_t i, int k, double& trace, double& row_k,
                                   double& row_l, AddColumn add_column) {
  trace = row_k = row_l = 0;
  for (int64_t t = 0; t < count[i]; ++t) {
    const int64_t j = cols[i * k + t];
    const double a = kv[i * k + t];
    const double l = lv[i * k + t];
    row_k += a;
    row_l += l;
    add_column(j, a, l);
    const int64_t* row_j = cols + j * k;
    const int64_t lo = lower_bound(row_j, count[j], i);
    if (lo < count[j] && row_j[lo] == i) trace += a * lv[j * k + lo];
  }
}

template <typename T>
PF_HOST_DEVICE bool better(T v, int64_t i, T w, int64_t j) {
  return v > w || (v == w && i < j);
}

// The best k of row `row`'s m candidates, larger first, ties to the smaller index; index -1
// marks an empty slot (in and out). Insertion into a sorted list: O(m) compares plus O(k) per
// accepted candidate.
template <typename T>
PF_HOST_DEVICE void topk_merge_row(const T* values, const int64_t* indices, int64_t row, int64_t m, int k,
                                   T* out_values, int64_t* out_indices) {
  T best_v[kMaxListK];
  int64_t best_i[kMaxListK];
  int filled = 0;
  for (int64_t c = 0; c < m; ++c) {
    const T v = values[row * m + c];
    const int64_t ix = indices[row * m + c];
    if (ix < 0) continue;
    if (filled == k && !better(v, ix, best_v[k - 1], best_i[k - 1])) continue;
    int p = filled < k ? filled++ : k - 1;
    while (p > 0 && better(v, ix, best_v[p - 1], best_i[p - 1])) {
      best_v[p] = best_v[p - 1];
      best_i[p] = best_i[p - 1];
      --p;
    }
    best_v[p] = v;
    best_i[p] = ix;
  }
  for (int t = 0; t < k; ++t) {
    out_values[row * k + t] = t < filled ? best_v[t] : -static_cast<T>(INFINITY);
    out_indices[row * k + t] = t < filled ? best_i[t] : -1;
  }
}

}  // namespace cuda
}  // namespace pf
