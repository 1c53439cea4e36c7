#include "permute_lists.h"

#include "../common/parallel.h"

namespace pf {

void permute_lists(const int64_t* lists, int64_t n, int64_t k, const int64_t* perm,
                   const int64_t* inverse, int64_t* out) {
#pragma omp parallel for schedule(static) if (n * k > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* src = lists + perm[i] * k;
    int64_t* dst = out + i * k;
    for (int64_t c = 0; c < k; ++c) dst[c] = inverse[src[c]];
  }
}


}  // namespace pf
