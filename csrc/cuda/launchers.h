#pragma once
#include <cstdint>
#include <string>

namespace pf {
// "ok" and the device count, or the CUDA runtime's reason (e.g. no driver) and 0.
std::string cuda_runtime_status(int* device_count);
void mutual_overlap_cuda(uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t out,
                         uintptr_t stream);
// op: "cycle_hits" (needs an N x k int64 scratch), "lcs_lengths", "edit_distances".
void neighbor_list_cuda(const std::string& op, uintptr_t a, uintptr_t b, int64_t n, int64_t k,
                        uintptr_t scratch, uintptr_t out, uintptr_t stream);
size_t masked_kernel_sums_workspace_cuda(int64_t n, int64_t k);
void masked_kernel_sums_cuda(uintptr_t idx_k, uintptr_t val_k, uintptr_t idx_l, uintptr_t val_l,
                             int64_t n, int64_t k, bool zero_diagonal, bool is_double,
                             uintptr_t work, uintptr_t out6, uintptr_t stream);
void topk_merge_cuda(uintptr_t values, uintptr_t indices, int64_t n, int64_t m, int64_t k,
                     uintptr_t out_values, uintptr_t out_indices, bool is_double, uintptr_t stream);
int max_list_k_cuda();
}  // namespace pf
