// The topk_merge op on the GPU: k-selection merge of partial top-k lists.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "list_rows.cuh"  // kMaxListK and the per-row bodies

namespace pf {
namespace cuda {

// Each row holds m candidates (values, indices; index -1 = empty); out: the best k, larger
// first, ties to the smaller index. Merges partial top-k lists of tiles or shards.
// 1 <= k <= kMaxListK (cudaErrorInvalidValue otherwise).
template <typename T>
cudaError_t launch_topk_merge(const T* values, const int64_t* indices, int64_t n, int64_t m,
                              int64_t k, T* out_values, int64_t* out_indices, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
