// Mutual-kNN overlap on the GPU: out[i] = |A(i) ∩ B(i)| for two N x k int64 neighbour lists.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace pf {
namespace cuda {

cudaError_t launch_mutual_overlap(const int64_t* a, const int64_t* b, int64_t n, int64_t k,
                                  int64_t* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
