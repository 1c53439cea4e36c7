// The cknna_sums op on the GPU: CKNNA's sparse sums (see csrc/cpu/cknna_sums.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "list_rows.cuh"  // kMaxListK and the per-row bodies

namespace pf {
namespace cuda {

// Bytes of device workspace launch_cknna_sums needs: n*k int64 + 2*n*k + 4*n float64 + n int64.
size_t cknna_sums_workspace(int64_t n, int64_t k);

// out6 = {Σ K'_ij L'_ji, Σ K', Σ L', 1ᵀK'L'1, 1ᵀL'K'1, Σ M}, float64, over C-contiguous N x k
// lists idx_* (int64) and values val_* (T). 1 <= k <= kMaxListK (cudaErrorInvalidValue otherwise).
template <typename T>
cudaError_t launch_cknna_sums(const int64_t* idx_k, const T* val_k, const int64_t* idx_l,
                              const T* val_l, int64_t n, int64_t k, bool zero_diagonal, void* work,
                              double* out6, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
