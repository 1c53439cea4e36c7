// GPU neighbour-list metrics over two N x k int64 lists (one value per row, int64 out).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "list_rows.cuh"  // kMaxListK and the per-row bodies

namespace pf {
namespace cuda {

// out[i] = 1 if i ∈ A(j) for some j ∈ B(i). `scratch` is N x k int64 (A's rows sorted).
cudaError_t launch_cycle_hits(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                              int64_t* scratch, int64_t* out, cudaStream_t stream);
// out[i] = length of the longest common subsequence of A(i) and B(i).
cudaError_t launch_lcs_lengths(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                               int64_t* out, cudaStream_t stream);
// out[i] = unit-cost Levenshtein distance of A(i) and B(i).
cudaError_t launch_edit_distances(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                                  int64_t* out, cudaStream_t stream);

// CKNNA's sparse sums (see csrc/cpu/cknna.h): out6 = {Σ K'_ij L'_ji, Σ K', Σ L', 1ᵀK'L'1,
// 1ᵀL'K'1, Σ M}, float64. `work` must hold n*k int64 + 2*n*k + 4*n float64 + n int64.
template <typename T>
cudaError_t launch_masked_kernel_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l,
                                      const T* val_l, int64_t n, int64_t k, bool zero_diagonal,
                                      void* work, double* out6, cudaStream_t stream);
size_t masked_kernel_sums_workspace(int64_t n, int64_t k);

// k-selection merge: each row holds m candidates (values, indices); out: the best k, larger
// first, ties to the smaller index. Merges partial top-k lists of tiles or shards.
template <typename T>
cudaError_t launch_topk_merge(const T* values, const int64_t* indices, int64_t n, int64_t m,
                              int64_t k, T* out_values, int64_t* out_indices, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
