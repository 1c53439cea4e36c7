// CPU features the certified bf16 kNN screen (python/platonic_fast/ops/knn_screen.py) chooses
// from at run time. The build stays portable: nothing here is compiled for a newer CPU than the
// builder's default target; the answers come from cpuid/xgetbv and, for AMX, the Linux
// permission request.
#pragma once
#include <cstdint>
#include <string>

#include "knn.h"

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

// The screen's own bf16 product, on AMX-BF16 tiles (tdpbf16ps) or AVX-512-BF16 (vdpbf16ps),
// each compiled for its target only and run only after cpu_features() found it (AMX: and the
// kernel granted the tile permission): the rest of the build and the .so stay portable. Rows are
// bfloat16 bit patterns (uint16), row-major with leading dimensions; products of bf16 numbers are
// exact in float32 and summed in float32 (the order of the instruction's lanes), with no rounding
// of the output (unlike oneDNN's bf16 matmul, which rounds it to bf16).
//
// bf16_merge_product: the scores <q_r, keys_c> of a tile go straight into the merger, a few
// registers' worth at a time (no score tile in memory): merger row row0 + r gets candidate
// col0 + c, and with mirror (an off-diagonal tile of the symmetric form, rows and columns
// different merger rows) row col0 + c gets row0 + r as well.
enum class Bf16Isa { automatic, avx512, amx };  // automatic: AMX where usable, else AVX-512-BF16

template <typename T>
void bf16_merge_product(KnnMerger<T>& merger, const uint16_t* q, int64_t ldq, int64_t nq, const uint16_t* keys,
                        int64_t ldk, int64_t nk, int64_t d, int64_t row0, int64_t col0, bool exclude_self,
                        bool mirror, Bf16Isa isa = Bf16Isa::automatic);

// out[i * ldo + j] = <a_i, b_j> for m x n pairs of rows: the same kernel, stored.
void bf16_gemm_nt(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* b, int64_t ldb, int64_t n,
                  int64_t d, float* out, int64_t ldo, Bf16Isa isa = Bf16Isa::automatic);

// Detected once (thread-safe static); the AMX permission is requested on the first call.
const CpuFeatures& cpu_features();

}  // namespace pf
