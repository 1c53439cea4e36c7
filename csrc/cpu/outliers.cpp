#include "outliers.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/check.h"
#include "../common/parallel.h"

namespace pf {

void outliers_abs_order_stats(const float* x, int64_t rows, int64_t m, int64_t ld, int64_t lo,
                              int64_t hi, float* out_lo, float* out_hi) {
  PF_CHECK(0 <= lo && lo <= hi && hi < m, "order-statistic positions out of range");
#pragma omp parallel if (rows * m > kParallelGrain)
  {
    std::vector<float> buf(static_cast<size_t>(m));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * ld;
      for (int64_t t = 0; t < m; ++t) buf[t] = std::fabs(row[t]);
      std::nth_element(buf.begin(), buf.begin() + lo, buf.end());
      out_lo[r] = buf[lo];
      // The next order statistic is the smallest entry right of lo.
      out_hi[r] = hi == lo ? buf[lo] : *std::min_element(buf.begin() + lo + 1, buf.end());
    }
  }
}

}  // namespace pf
