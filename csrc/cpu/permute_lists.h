// Neighbour lists of a row-permuted feature set, by relabelling (no kNN recomputed).
#pragma once
#include <cstdint>

namespace pf {

// For features B and a permutation π of its N rows, the lists of B[π] are
// out[i] = π⁻¹(lists[π(i)]): row π(i)'s list, each index mapped through the inverse.
// `inverse` must be π⁻¹ (inverse[perm[i]] = i); both were checked by the caller.
// O(N·k), one pass.
void permute_lists(const int64_t* lists, int64_t n, int64_t k, const int64_t* perm,
                   const int64_t* inverse, int64_t* out);


}  // namespace pf
