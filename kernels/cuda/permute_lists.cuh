// The permute_lists op on the GPU: neighbour lists of a row-permuted feature set.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace pf {
namespace cuda {

// out[i, c] = inverse[lists[perm[i], c]] for an N x k C-contiguous int64 list matrix.
// perm and inverse are checked by the caller (a permutation and its inverse).
cudaError_t launch_permute_lists(const int64_t* lists, int64_t n, int64_t k, const int64_t* perm,
                                 const int64_t* inverse, int64_t* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
