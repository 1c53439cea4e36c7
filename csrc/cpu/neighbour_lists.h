// Metrics over two neighbour-list matrices of the same N samples (N x k, int64, row i lists
// the neighbours of sample i). Each returns one number per row; the Python layer averages.
// All are O(N k log k): sorted copies + binary search replace the O(k^2) scans, so k = N-1
// never costs O(N^3).
#pragma once
#include <cstdint>

#include "../common/list_metric.h"

namespace pf {

// |A(i) ∩ B(i)|
void mutual_overlap(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out);
// 1 if i ∈ A(j) for some j ∈ B(i), else 0
void cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out);
// length of the longest common subsequence of the ordered lists A(i), B(i)
void lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out);
// unit-cost Levenshtein distance between A(i) and B(i)
void edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k, int64_t* out);

// The op: one of the four above by metric, out[i] for row i.
void neighbour_lists(ListMetric metric, const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                     int64_t* out);

// Throws std::invalid_argument unless every index lies in [0, n_keys).
void check_indices(const int64_t* idx, int64_t count, int64_t n_keys, const char* name);

}  // namespace pf
