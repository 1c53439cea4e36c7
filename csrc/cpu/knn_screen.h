// CPU features the certified bf16 kNN screen (python/platonic_fast/ops/knn_screen.py) chooses
// from at run time. The build stays portable: nothing here is compiled for a newer CPU than the
// builder's default target; the answers come from cpuid/xgetbv and, for AMX, the Linux
// permission request.
#pragma once
#include <cstdint>
#include <string>

namespace pf {

struct CpuFeatures {
  bool avx512f = false;      // cpuid and the OS saves zmm state (XCR0 bits 5-7)
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;  // vdpbf16ps / vcvtne2ps2bf16
  bool amx_tile = false;     // cpuid and the OS enables tile state (XCR0 bits 17-18)
  bool amx_bf16 = false;
  bool amx_permitted = false;  // arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) granted
  std::string amx_note;        // why AMX cannot be used, in words (empty when it can)
};

// out[p] = ⟨q[qi[p]], keys[ki[p]]⟩ in float64 for n pairs (rows of d entries, leading dimensions
// ldq/ldk). The summation order is fixed (8 running sums over strided entries, combined in a
// fixed tree, then the tail): a pair's value depends only on the two rows' bits, never on
// where the pair sits or on the thread count, so identical keys get identical scores.
// float32 products are exact in float64.
template <typename T>
void dot64_pairs(const T* q, int64_t ldq, const T* keys, int64_t ldk, int64_t d, const int64_t* qi,
                 const int64_t* ki, int64_t n, double* out);

// Detected once (thread-safe static); the AMX permission is requested on the first call.
const CpuFeatures& cpu_features();

}  // namespace pf
