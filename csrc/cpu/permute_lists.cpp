#include "permute_lists.h"

#include <algorithm>

#include "../common/check.h"
#include "../common/parallel.h"
#include "cknna_sums.h"
#include "neighbour_lists.h"

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

void check_permutations(const int64_t* perms, int64_t count, int64_t n) {
  // stamp[v] == t + 1 once value v was seen in permutation t: no clearing between rows.
  std::vector<int64_t> stamp(static_cast<size_t>(n), 0);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t* p = perms + t * n;
    for (int64_t i = 0; i < n; ++i) {
      PF_CHECK(p[i] >= 0 && p[i] < n && stamp[p[i]] != t + 1,
               "permutation " << t << " is not a permutation of 0.." << n - 1 << " (entry " << i
                              << " is " << p[i] << ")");
      stamp[p[i]] = t + 1;
    }
  }
}

namespace {

// Thread-local work space of one (permutation, b-set) task.
struct Relabelled {
  std::vector<int64_t> inverse, lists, per_row;

  void resize(int64_t n, int64_t k) {
    inverse.resize(static_cast<size_t>(n));
    lists.resize(static_cast<size_t>(n * k));
    per_row.resize(static_cast<size_t>(n));
  }

  void build(const int64_t* src, const int64_t* perm, int64_t n, int64_t k) {
    for (int64_t i = 0; i < n; ++i) inverse[perm[i]] = i;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* row = src + perm[i] * k;
      int64_t* dst = lists.data() + i * k;
      for (int64_t c = 0; c < k; ++c) dst[c] = inverse[row[c]];
    }
  }
};

}  // namespace

void permute_lists_scores(ListMetric metric, const std::vector<const int64_t*>& a,
                          const std::vector<const int64_t*>& b, int64_t n, int64_t k,
                          const int64_t* perms, int64_t count, int64_t* out) {
  const int64_t la = static_cast<int64_t>(a.size()), lb = static_cast<int64_t>(b.size());
  const int64_t tasks = count * lb;
#pragma omp parallel if (tasks > 1 && n * k * la > kParallelGrain)
  {
    Relabelled w;
    w.resize(n, k);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task / lb, j = task % lb;
      w.build(b[j], perms + t * n, n, k);
      for (int64_t i = 0; i < la; ++i) {
        // Nested inside this region, the op's own OpenMP loop runs on this thread alone.
        neighbour_lists(metric, a[i], w.lists.data(), n, k, w.per_row.data());
        int64_t total = 0;
        for (int64_t r = 0; r < n; ++r) total += w.per_row[r];
        out[(t * la + i) * lb + j] = total;
      }
    }
  }
}

template <typename T>
void permute_lists_cknna(const std::vector<const int64_t*>& a_idx, const std::vector<const T*>& a_val,
                         const std::vector<const int64_t*>& b_idx, const std::vector<const T*>& b_val,
                         int64_t n, int64_t k, bool zero_diagonal, const int64_t* perms,
                         int64_t count, double* out) {
  const int64_t la = static_cast<int64_t>(a_idx.size()), lb = static_cast<int64_t>(b_idx.size());
  // Each a-set's rows sorted once for every permutation and b-set.
  std::vector<int64_t> a_cols(static_cast<size_t>(la * n * k));
  std::vector<T> a_vals(static_cast<size_t>(la * n * k));
  for (int64_t i = 0; i < la; ++i)
    cknna_sort_rows(a_idx[i], a_val[i], n, k, a_cols.data() + i * n * k, a_vals.data() + i * n * k);
  const int64_t tasks = count * lb;
#pragma omp parallel if (tasks > 1 && n * k * la > kParallelGrain)
  {
    Relabelled w;
    w.resize(n, k);
    std::vector<T> values(static_cast<size_t>(n * k)), b_vals(static_cast<size_t>(n * k));
    std::vector<int64_t> b_cols(static_cast<size_t>(n * k));
    CknnaWork work;
    work.resize(n, k);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task / lb, j = task % lb;
      const int64_t* perm = perms + t * n;
      w.build(b_idx[j], perm, n, k);
      for (int64_t i = 0; i < n; ++i)  // the values move with their rows
        std::copy_n(b_val[j] + perm[i] * k, k, values.data() + i * k);
      cknna_sort_rows(w.lists.data(), values.data(), n, k, b_cols.data(), b_vals.data());
      for (int64_t i = 0; i < la; ++i) {
        const CknnaSums s = cknna_sums_sorted(a_cols.data() + i * n * k, a_vals.data() + i * n * k,
                                              b_cols.data(), b_vals.data(), n, k, zero_diagonal, work, false);
        const auto v = s.values();
        std::copy(v.begin(), v.end(), out + ((t * la + i) * lb + j) * CknnaSums::kCount);
      }
    }
  }
}

template void permute_lists_cknna<float>(const std::vector<const int64_t*>&, const std::vector<const float*>&,
                                         const std::vector<const int64_t*>&, const std::vector<const float*>&,
                                         int64_t, int64_t, bool, const int64_t*, int64_t, double*);
template void permute_lists_cknna<double>(const std::vector<const int64_t*>&, const std::vector<const double*>&,
                                          const std::vector<const int64_t*>&, const std::vector<const double*>&,
                                          int64_t, int64_t, bool, const int64_t*, int64_t, double*);

}  // namespace pf
