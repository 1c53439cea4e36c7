// The neighbour_lists op on the GPU: one int64 per row of two N x k int64 lists (C-contiguous),
// for each metric of csrc/common/list_metric.h, the same algorithms as csrc/cpu/neighbour_lists.cpp.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "../../csrc/common/list_metric.h"
#include "list_rows.cuh"  // kMaxListK and the per-row bodies

namespace pf {
namespace cuda {

// out[i] = the metric of row i. `scratch` (N x k int64: A's rows sorted) is used by cycle_hits
// only. mutual_overlap takes any k >= 1, the others 1 <= k <= kMaxListK
// (cudaErrorInvalidValue otherwise).
cudaError_t launch_neighbour_lists(ListMetric metric, const int64_t* a, const int64_t* b, int64_t n,
                                   int64_t k, int64_t* scratch, int64_t* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace pf
