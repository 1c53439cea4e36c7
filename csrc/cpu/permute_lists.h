// Neighbour lists of a row-permuted feature set, by relabelling (no kNN recomputed), and the
// permutation nulls built on it.
#pragma once
#include <cstdint>
#include <vector>

#include "../common/list_metric.h"

namespace pf {

// For features B and a permutation π of its N rows, the lists of B[π] are
// out[i] = π⁻¹(lists[π(i)]): row π(i)'s list, each index mapped through the inverse.
// `inverse` must be π⁻¹ (inverse[perm[i]] = i); both were checked by the caller.
// O(N·k), one pass.
void permute_lists(const int64_t* lists, int64_t n, int64_t k, const int64_t* perm,
                   const int64_t* inverse, int64_t* out);

// Throws std::invalid_argument unless each of the `count` rows of `perms` (count x n) is a
// permutation of 0..n-1.
void check_permutations(const int64_t* perms, int64_t count, int64_t n);

// A layer search's null for a neighbour-list metric, in one call: for every permutation t
// (rows of `perms`, count x n, checked), every list set b[j] is relabelled once and scored
// against every a[i]: out[(t * a.size() + i) * b.size() + j] = Σ_rows metric(a[i], b[j] under π_t).
// Parallel over (t, j); each entry is computed by one thread (deterministic).
void permute_lists_scores(ListMetric metric, const std::vector<const int64_t*>& a,
                          const std::vector<const int64_t*>& b, int64_t n, int64_t k,
                          const int64_t* perms, int64_t count, int64_t* out);

// The same for CKNNA's sparse sums: lists and kernel values of every set; out holds six
// doubles per (t, i, j): trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count.
template <typename T>
void permute_lists_cknna(const std::vector<const int64_t*>& a_idx, const std::vector<const T*>& a_val,
                         const std::vector<const int64_t*>& b_idx, const std::vector<const T*>& b_val,
                         int64_t n, int64_t k, bool zero_diagonal, const int64_t* perms,
                         int64_t count, double* out);

}  // namespace pf
