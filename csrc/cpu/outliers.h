// Order statistics of |x| per row, for the reference's outlier clamping (per-sample quantiles).
#pragma once
#include <cstdint>

namespace pf {

// For each of `rows` rows of length m (row stride ld): the entries at 0-based ascending
// positions lo <= hi of the sorted |x|, written to out_lo[r], out_hi[r]. O(m) per row.
void outliers_abs_order_stats(const float* x, int64_t rows, int64_t m, int64_t ld, int64_t lo,
                              int64_t hi, float* out_lo, float* out_hi);

}  // namespace pf
