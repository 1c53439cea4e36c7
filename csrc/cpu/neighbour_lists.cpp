#include "neighbour_lists.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common/check.h"
#include "../common/myers.h"
#include "../common/parallel.h"

namespace pf {

namespace {

// Row i of `lists` as (neighbour, position) pairs sorted by neighbour, for binary search.
using Keyed = std::pair<int64_t, int64_t>;

inline void sorted_row(const int64_t* row, int64_t k, std::vector<Keyed>& out) {
  out.resize(static_cast<size_t>(k));
  for (int64_t p = 0; p < k; ++p) out[p] = {row[p], p};
  std::sort(out.begin(), out.end());
}

// Position of `value` in a sorted row, or -1.
inline int64_t find_position(const std::vector<Keyed>& sorted, int64_t value) {
  auto it = std::lower_bound(sorted.begin(), sorted.end(), Keyed{value, INT64_MIN});
  return (it != sorted.end() && it->first == value) ? it->second : -1;
}

// All rows sorted (values only), for membership tests on other rows.
std::vector<int64_t> sorted_rows(const int64_t* lists, int64_t n, int64_t k) {
  std::vector<int64_t> s(lists, lists + n * k);
#pragma omp parallel for schedule(static) if (n * k > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) std::sort(s.begin() + i * k, s.begin() + (i + 1) * k);
  return s;
}

inline bool row_contains(const std::vector<int64_t>& sorted, int64_t row, int64_t k,
                         int64_t value) {
  auto first = sorted.begin() + row * k;
  return std::binary_search(first, first + k, value);
}

}  // namespace

void check_indices(const int64_t* idx, int64_t count, int64_t n_keys, const char* name) {
  for (int64_t t = 0; t < count; ++t) {
    PF_CHECK(idx[t] >= 0 && idx[t] < n_keys, name << " holds index " << idx[t]
                                                   << " outside [0, " << n_keys << ")");
  }
}

void mutual_overlap(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
#pragma omp parallel if (n * k > kParallelGrain)
  {
    std::vector<int64_t> sa, sb;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* ra = a + i * k;
      const int64_t* rb = b + i * k;
      int64_t hits = 0;
      if (k <= 32) {  // a k x k compare beats sorting for the usual k = 10
        for (int64_t p = 0; p < k; ++p)
          for (int64_t q = 0; q < k; ++q) hits += (ra[p] == rb[q]);
      } else {
        sa.assign(ra, ra + k);
        sb.assign(rb, rb + k);
        std::sort(sa.begin(), sa.end());
        std::sort(sb.begin(), sb.end());
        size_t p = 0, q = 0;
        while (p < sa.size() && q < sb.size()) {
          if (sa[p] < sb[q]) ++p;
          else if (sb[q] < sa[p]) ++q;
          else { ++hits; ++p; ++q; }
        }
      }
      out[i] = hits;
    }
  }
}

void cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  const std::vector<int64_t> sa = sorted_rows(a, n, k);
#pragma omp parallel for schedule(static) if (n * k > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) {
    int64_t hit = 0;
    for (int64_t q = 0; q < k && !hit; ++q) hit = row_contains(sa, b[i * k + q], k, i);
    out[i] = hit;
  }
}

void lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  // Neighbour lists hold distinct entries, so the LCS of A(i) and B(i) is the longest
  // increasing run of A-positions read in B's order: O(k log k) by patience sorting.
#pragma omp parallel if (n * k > kParallelGrain)
  {
    std::vector<Keyed> sa;
    std::vector<int64_t> tails;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      sorted_row(a + i * k, k, sa);
      tails.clear();
      for (int64_t q = 0; q < k; ++q) {
        const int64_t pos = find_position(sa, b[i * k + q]);
        if (pos < 0) continue;
        auto it = std::lower_bound(tails.begin(), tails.end(), pos);
        if (it == tails.end()) tails.push_back(pos);
        else *it = pos;
      }
      out[i] = static_cast<int64_t>(tails.size());
    }
  }
}

void edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out) {
  // Myers' bit-parallel edit distance (1999), blocked over 64-bit words: O(k * ceil(k/64))
  // per row. A(i) is the pattern; each symbol of B(i) occurs at most once in it, so its
  // match vector has at most one bit, found by binary search.
  const int64_t words = (k + 63) / 64;
  const uint64_t last_high = uint64_t{1} << ((k - 1) % 64);
#pragma omp parallel if (n * k > kParallelGrain)
  {
    std::vector<Keyed> sa;
    std::vector<uint64_t> pv(static_cast<size_t>(words)), mv(static_cast<size_t>(words));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      sorted_row(a + i * k, k, sa);
      std::fill(pv.begin(), pv.end(), ~uint64_t{0});
      std::fill(mv.begin(), mv.end(), uint64_t{0});
      int64_t score = k;
      for (int64_t t = 0; t < k; ++t) {
        const int64_t pos = find_position(sa, b[i * k + t]);
        int hin = 1;  // global distance: the top boundary row grows by one per column
        for (int64_t w = 0; w < words; ++w) {
          const uint64_t high = (w == words - 1) ? last_high : (uint64_t{1} << 63);
          hin = myers_block_step(pv[w], mv[w], pos, w, high, hin);
        }
        score += hin;
      }
      out[i] = score;
    }
  }
}

void neighbour_lists(ListMetric metric, const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                     int64_t* out) {
  switch (metric) {
    case ListMetric::mutual_overlap: return mutual_overlap(a, b, n, k, out);
    case ListMetric::cycle_hits: return cycle_hits(a, b, n, k, out);
    case ListMetric::lcs_lengths: return lcs_lengths(a, b, n, k, out);
    case ListMetric::edit_distances: return edit_distances(a, b, n, k, out);
  }
}

}  // namespace pf
