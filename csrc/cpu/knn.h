// The CPU kNN's running exact top-k per row, fed tile by tile with similarity scores.
//
// Each row keeps a small buffer of candidates (capacity 2k). A score enters only if it beats
// the row's current k-th best; when the buffer fills, nth_element keeps the best k. This is
// amortised O(1) per candidate for any k (k = N-1 included), and the hot path is one compare.
// Order: larger score first, ties to the smaller index.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

namespace pf {

template <typename T>
class KnnMerger {
 public:
  using value_type = T;
  KnnMerger(int64_t n_rows, int64_t k);

  // tile[r * ld + c] = score(row0 + r, col0 + c); merged into rows row0 .. row0 + rows - 1.
  void add_rows(const T* tile, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
                int64_t col0, bool exclude_self);
  // The transposed use of the same tile: merged into rows col0 .. col0 + cols - 1, whose
  // candidates are row0 + r. Lets a symmetric self-kNN compute each off-diagonal tile once.
  void add_cols(const T* tile, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
                int64_t col0, bool exclude_self);
  // Sorted best-k per row. Rows that saw fewer than k candidates are padded with -inf / -1.
  void finalize(T* values, int64_t* indices);

  int64_t n_rows() const { return n_rows_; }
  int64_t k() const { return k_; }

  // For producers that compute scores themselves and offer only those that may enter (the fused
  // bf16 screen, knn_screen.cpp): bars()[row] is the row's current k-th best (a score below it
  // cannot enter; it only rises), offer() the merge of one candidate. As with add_rows, one
  // thread at a time per row.
  const T* bars() const { return thr_val_.data(); }
  void offer(int64_t row, T value, int64_t index);

 private:
  void push(int64_t row, T value, int64_t index);
  void compact(int64_t row);

  int64_t n_rows_, k_, cap_;
  struct Entry {
    T value;
    int64_t index;
  };
  std::vector<Entry> buf_;      // n_rows x cap candidates
  std::vector<int32_t> count_;
  std::vector<T> thr_val_;      // the row's current k-th best (or -inf before k are known)
  std::vector<int64_t> thr_idx_;
};

extern template class KnnMerger<float>;
extern template class KnnMerger<double>;

}  // namespace pf
