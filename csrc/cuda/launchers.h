#pragma once
#include <cstdint>
#include <string>

namespace pf {
// "ok" and the device count, or the CUDA runtime's reason (e.g. no driver) and 0.
std::string cuda_runtime_status(int* device_count);
void mutual_overlap_cuda(uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t out,
                         uintptr_t stream);
}  // namespace pf
