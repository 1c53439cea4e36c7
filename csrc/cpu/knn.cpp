#include "knn.h"

#include <algorithm>

#include "../common/check.h"
#include "../common/parallel.h"

namespace pf {

namespace {

// (value, index) pairs ordered best first: larger value, then smaller index.
template <typename T>
inline bool better(T v, int64_t i, T w, int64_t j) {
  return v > w || (v == w && i < j);
}

}  // namespace

template <typename T>
KnnMerger<T>::KnnMerger(int64_t n_rows, int64_t k)
    : n_rows_(n_rows), k_(k), cap_(std::max<int64_t>(2 * k, k + 8)) {
  PF_CHECK(n_rows >= 0, "n_rows must be >= 0, got " << n_rows);
  PF_CHECK(k >= 1, "k must be >= 1, got " << k);
  buf_.resize(static_cast<size_t>(n_rows * cap_));
  count_.assign(static_cast<size_t>(n_rows), 0);
  thr_val_.assign(static_cast<size_t>(n_rows), -std::numeric_limits<T>::infinity());
  thr_idx_.assign(static_cast<size_t>(n_rows), std::numeric_limits<int64_t>::max());
}

template <typename T>
void KnnMerger<T>::compact(int64_t row) {
  Entry* e = buf_.data() + row * cap_;
  std::nth_element(e, e + (k_ - 1), e + count_[row], [](const Entry& a, const Entry& b) {
    return better(a.value, a.index, b.value, b.index);
  });
  count_[row] = static_cast<int32_t>(k_);
  thr_val_[row] = e[k_ - 1].value;
  thr_idx_[row] = e[k_ - 1].index;
}

template <typename T>
inline void KnnMerger<T>::push(int64_t row, T value, int64_t index) {
  if (!better(value, index, thr_val_[row], thr_idx_[row])) return;
  const int64_t c = count_[row];
  buf_[row * cap_ + c] = Entry{value, index};
  count_[row] = static_cast<int32_t>(c + 1);
  if (c + 1 == cap_) compact(row);
}

template <typename T>
void KnnMerger<T>::offer(int64_t row, T value, int64_t index) {
  push(row, value, index);
}

namespace {

constexpr int64_t kChunk = 16;  // one AVX-512 register of floats

// True if any of s[0..len) >= bound[0 or c]: a branch-free loop the compiler vectorises, so
// the common case (nothing beats the threshold) costs one compare per score.
template <typename T>
inline bool any_at_least(const T* s, int64_t len, T bound) {
  bool hit = false;
  for (int64_t c = 0; c < len; ++c) hit |= (s[c] >= bound);
  return hit;
}

template <typename T>
inline bool any_at_least(const T* s, int64_t len, const T* bounds) {
  bool hit = false;
  for (int64_t c = 0; c < len; ++c) hit |= (s[c] >= bounds[c]);
  return hit;
}

}  // namespace

template <typename T>
void KnnMerger<T>::add_rows(const T* tile, int64_t rows, int64_t cols, int64_t ld,
                             int64_t row0, int64_t col0, bool exclude_self) {
  PF_CHECK(row0 >= 0 && row0 + rows <= n_rows_, "tile rows out of range");
  PF_CHECK(ld >= cols, "tile leading dimension smaller than its width");
#pragma omp parallel for schedule(dynamic, 16) if (rows * cols > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = row0 + r;
    const T* s = tile + r * ld;
    for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
      const int64_t len = std::min(kChunk, cols - c0);
      if (!any_at_least(s + c0, len, thr_val_[row])) continue;
      for (int64_t c = c0; c < c0 + len; ++c) {
        const int64_t j = col0 + c;
        if (s[c] < thr_val_[row] || (exclude_self && j == row)) continue;
        push(row, s[c], j);
      }
    }
  }
}

template <typename T>
void KnnMerger<T>::add_cols(const T* tile, int64_t rows, int64_t cols, int64_t ld,
                             int64_t row0, int64_t col0, bool exclude_self) {
  PF_CHECK(col0 >= 0 && col0 + cols <= n_rows_, "tile columns out of range");
  PF_CHECK(ld >= cols, "tile leading dimension smaller than its width");
  // Each thread owns a wide strip of columns (= output rows) and walks the tile row by row:
  // reads stay long and contiguous, the strip's thresholds stay in cache, and no two threads
  // touch the same output row.
  const int64_t threads = (rows * cols > kParallelGrain) ? max_threads() : 1;
  const int64_t strip = ((cols + threads - 1) / threads + kChunk - 1) / kChunk * kChunk;
  const int64_t n_strips = (cols + strip - 1) / strip;
  const T* thr = thr_val_.data() + col0;
#pragma omp parallel for schedule(static, 1) if (threads > 1)
  for (int64_t st = 0; st < n_strips; ++st) {
    const int64_t c_begin = st * strip;
    const int64_t c_end = std::min(cols, c_begin + strip);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t j = row0 + r;
      const T* s = tile + r * ld;
      for (int64_t c0 = c_begin; c0 < c_end; c0 += kChunk) {
        const int64_t len = std::min(kChunk, c_end - c0);
        if (!any_at_least(s + c0, len, thr + c0)) continue;
        for (int64_t c = c0; c < c0 + len; ++c) {
          const int64_t row = col0 + c;
          if (s[c] < thr[c] || (exclude_self && j == row)) continue;
          push(row, s[c], j);
        }
      }
    }
  }
}

template <typename T>
void KnnMerger<T>::finalize(T* values, int64_t* indices) {
#pragma omp parallel for schedule(static) if (n_rows_ * k_ > kParallelGrain)
  for (int64_t row = 0; row < n_rows_; ++row) {
    Entry* e = buf_.data() + row * cap_;
    const int64_t m = std::min<int64_t>(count_[row], k_);
    std::partial_sort(e, e + m, e + count_[row], [](const Entry& a, const Entry& b) {
      return better(a.value, a.index, b.value, b.index);
    });
    for (int64_t t = 0; t < k_; ++t) {
      values[row * k_ + t] = t < m ? e[t].value : -std::numeric_limits<T>::infinity();
      indices[row * k_ + t] = t < m ? e[t].index : -1;
    }
  }
}

template class KnnMerger<float>;
template class KnnMerger<double>;

}  // namespace pf
