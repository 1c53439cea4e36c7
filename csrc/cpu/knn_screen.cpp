#include "knn_screen.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/check.h"
#include "../common/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The intrinsics are usable inside functions compiled for their target (the attribute below);
// nothing else in the build is compiled for AVX-512.
#include <immintrin.h>
#define PF_BF16_KERNEL 1
#define PF_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace pf {

namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1u;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool zmm_state = (xcr0 & 0xE6u) == 0xE6u;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  const bool tile_state = ((xcr0 >> 17) & 3u) == 3u;  // XTILECFG, XTILEDATA
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx512f = zmm_state && ((b >> 16) & 1u);
  f.avx512bw = zmm_state && ((b >> 30) & 1u);
  f.avx512vl = zmm_state && ((b >> 31) & 1u);
  f.amx_bf16 = tile_state && ((d >> 22) & 1u);
  f.amx_tile = tile_state && ((d >> 24) & 1u);
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx512_bf16 = f.avx512f && ((a1 >> 5) & 1u);
  if (!f.amx_tile) {
    f.amx_note = "no AMX on this CPU";
  } else {
#if defined(__linux__)
    // Linux hands out the 8 KiB tile-data state only to processes that ask for it.
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    f.amx_permitted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    if (!f.amx_permitted) f.amx_note = "the kernel refused the AMX tile permission (arch_prctl)";
#else
    f.amx_note = "AMX permission request is implemented for Linux only";
#endif
  }
  return f;
}
#else
CpuFeatures detect() {
  CpuFeatures f;
  f.amx_note = "not an x86-64 CPU";
  return f;
}
#endif

}  // namespace

template <typename T>
void dot64_pairs(const T* q, int64_t ldq, const T* keys, int64_t ldk, int64_t d, const int64_t* qi,
                 const int64_t* ki, int64_t n, double* out) {
  constexpr int64_t kLanes = 8;
  const int64_t body = d / kLanes * kLanes;
#pragma omp parallel for schedule(static, 64) if (n * d > kParallelGrain)
  for (int64_t p = 0; p < n; ++p) {
    const T* a = q + qi[p] * ldq;
    const T* b = keys + ki[p] * ldk;
    double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t t = 0; t < body; t += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(a[t + l]) * static_cast<double>(b[t + l]);
    }
    double s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (int64_t t = body; t < d; ++t) s += static_cast<double>(a[t]) * static_cast<double>(b[t]);
    out[p] = s;
  }
}

template void dot64_pairs<float>(const float*, int64_t, const float*, int64_t, int64_t, const int64_t*,
                                 const int64_t*, int64_t, double*);
template void dot64_pairs<double>(const double*, int64_t, const double*, int64_t, int64_t, const int64_t*,
                                  const int64_t*, int64_t, double*);

// ---- the screen's bf16 product (AVX-512-BF16) ----
#ifdef PF_BF16_KERNEL
namespace {

// A micro-tile is kR query rows x kGroup keys, held in kR x kV accumulators (24 of the 32 zmm
// registers): per pair of entries, kV loads of packed keys and kR broadcasts feed 24
// independent vdpbf16ps, enough to cover the instruction's latency.
constexpr int kR = 6;
constexpr int kV = 4;
constexpr int64_t kGroup = 16 * kV;
// Query rows per task of a plain (unmirrored) tile: a strip's rows (96 x 2D bytes) stay in L2
// while every packed key group streams past once.
constexpr int64_t kStrip = 16 * kR;

int64_t pairs_of(int64_t d) { return (d + 1) / 2; }

// Keys in the instruction's pair layout: per group of kGroup keys and pair p (entries 2p, 2p + 1),
// kGroup 32-bit words, one per key, entry 2p in the low half. Missing keys (past nk) and the
// second entry of an odd width's last pair are zeros, whose products add exactly nothing.
void pack_keys(const uint16_t* keys, int64_t ldk, int64_t nk, int64_t d, uint32_t* out) {
  const int64_t pairs = pairs_of(d), groups = (nk + kGroup - 1) / kGroup, full = d / 2;
#pragma omp parallel for schedule(static) if (nk * d > kParallelGrain)
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t* dst = out + g * pairs * kGroup;
    for (int64_t c = 0; c < kGroup; ++c) {
      const int64_t j = g * kGroup + c;
      if (j >= nk) {
        for (int64_t p = 0; p < pairs; ++p) dst[p * kGroup + c] = 0;
        continue;
      }
      const uint16_t* src = keys + j * ldk;
      for (int64_t p = 0; p < full; ++p)
        dst[p * kGroup + c] = static_cast<uint32_t>(src[2 * p]) | (static_cast<uint32_t>(src[2 * p + 1]) << 16);
      if (d & 1) dst[full * kGroup + c] = src[d - 1];
    }
  }
}

// out[r * kGroup + c] = <a[r], key c of the group> in float32 (exact products, float32 sums).
PF_BF16_TARGET void micro_tile(const uint16_t* const* a, const uint32_t* bp, int64_t d, float* out) {
  __m512 acc[kR][kV];
  for (int r = 0; r < kR; ++r)
    for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t full = d / 2;
  for (int64_t p = 0; p < full; ++p) {
    const uint32_t* b = bp + p * kGroup;
    __m512bh bv[kV];
    for (int v = 0; v < kV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
    for (int r = 0; r < kR; ++r) {
      int32_t w;
      std::memcpy(&w, a[r] + 2 * p, sizeof w);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(w);
      for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  if (d & 1) {  // the last entry alone, paired with a zero
    const uint32_t* b = bp + full * kGroup;
    __m512bh bv[kV];
    for (int v = 0; v < kV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
    for (int r = 0; r < kR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(a[r][d - 1]));
      for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int v = 0; v < kV; ++v) _mm512_storeu_ps(out + r * kGroup + 16 * v, acc[r][v]);
}

// Lanes of s[0..16) at least bar (a scalar, or per lane: bars, read only where valid).
PF_BF16_TARGET inline uint32_t at_least(const float* s, float bar) {
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(s), _mm512_set1_ps(bar), _CMP_GE_OQ);
}
PF_BF16_TARGET inline uint32_t at_least(const float* s, double bar) {
  const __m512d b = _mm512_set1_pd(bar);
  const uint32_t lo = _mm512_cmp_pd_mask(_mm512_cvtps_pd(_mm256_loadu_ps(s)), b, _CMP_GE_OQ);
  const uint32_t hi = _mm512_cmp_pd_mask(_mm512_cvtps_pd(_mm256_loadu_ps(s + 8)), b, _CMP_GE_OQ);
  return lo | (hi << 8);
}
PF_BF16_TARGET inline uint32_t at_least(const float* s, const float* bars, __mmask16 valid) {
  return _mm512_mask_cmp_ps_mask(valid, _mm512_loadu_ps(s), _mm512_maskz_loadu_ps(valid, bars), _CMP_GE_OQ);
}
PF_BF16_TARGET inline uint32_t at_least(const float* s, const double* bars, __mmask16 valid) {
  const __mmask8 vlo = static_cast<__mmask8>(valid), vhi = static_cast<__mmask8>(valid >> 8);
  const uint32_t lo = _mm512_mask_cmp_pd_mask(vlo, _mm512_cvtps_pd(_mm256_loadu_ps(s)),
                                              _mm512_maskz_loadu_pd(vlo, bars), _CMP_GE_OQ);
  const uint32_t hi = _mm512_mask_cmp_pd_mask(vhi, _mm512_cvtps_pd(_mm256_loadu_ps(s + 8)),
                                              _mm512_maskz_loadu_pd(vhi, bars + 8), _CMP_GE_OQ);
  return lo | (hi << 8);
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// The merger's add_rows on a micro-tile: only scores at least the row's bar are offered (the
// merger itself settles ties by index), 16 compares at a time.
template <typename T>
PF_BF16_TARGET void merge_rows(KnnMerger<T>& m, const float* s, int rows, int64_t ncols, int64_t row,
                               int64_t col, bool exclude_self) {
  const T* bars = m.bars();
  for (int r = 0; r < rows; ++r) {
    const int64_t i = row + r;
    const float* sr = s + r * kGroup;
    for (int64_t c = 0; c < ncols; c += 16) {
      uint32_t hit = at_least(sr + c, bars[i]) & first_lanes(ncols - c);
      for (; hit; hit &= hit - 1) {
        const int64_t cc = c + __builtin_ctz(hit);
        const int64_t j = col + cc;
        if ((exclude_self && j == i) || static_cast<T>(sr[cc]) < bars[i]) continue;
        m.offer(i, static_cast<T>(sr[cc]), j);
      }
    }
  }
}

// The merger's add_cols on a micro-tile: key row col + c gets candidate row + r.
template <typename T>
PF_BF16_TARGET void merge_cols(KnnMerger<T>& m, const float* s, int rows, int64_t ncols, int64_t row,
                               int64_t col, bool exclude_self) {
  const T* bars = m.bars();
  for (int64_t c = 0; c < ncols; c += 16) {
    const __mmask16 valid = first_lanes(ncols - c);
    for (int r = 0; r < rows; ++r) {
      const float* sr = s + r * kGroup;
      uint32_t hit = at_least(sr + c, bars + col + c, valid);
      for (; hit; hit &= hit - 1) {
        const int64_t cc = c + __builtin_ctz(hit);
        const int64_t i = col + cc, j = row + r;
        if ((exclude_self && j == i) || static_cast<T>(sr[cc]) < bars[i]) continue;
        m.offer(i, static_cast<T>(sr[cc]), j);
      }
    }
  }
}

// Query rows [i0, i1) against key groups [g0, g1), a micro-tile at a time, each handed to
// epi(scores, first row, rows, first key, keys) while it is still in L1.
template <typename Epi>
void tile_task(const uint16_t* q, int64_t ldq, const uint32_t* packed, int64_t nk, int64_t d, int64_t i0,
               int64_t i1, int64_t g0, int64_t g1, Epi& epi) {
  alignas(64) float out[kR * kGroup];
  const int64_t pairs = pairs_of(d);
  for (int64_t g = g0; g < g1; ++g) {
    const uint32_t* bp = packed + g * pairs * kGroup;
    const int64_t c0 = g * kGroup, ncols = std::min(kGroup, nk - c0);
    for (int64_t i = i0; i < i1; i += kR) {
      const int rows = static_cast<int>(std::min<int64_t>(kR, i1 - i));
      const uint16_t* a[kR];
      // short micro-tiles repeat their last row (computed, not merged)
      for (int r = 0; r < kR; ++r) a[r] = q + (i + std::min(r, rows - 1)) * ldq;
      micro_tile(a, bp, d, out);
      epi(out, i, rows, c0, ncols);
    }
  }
}

std::vector<uint32_t> packed_keys(const uint16_t* keys, int64_t ldk, int64_t nk, int64_t d) {
  std::vector<uint32_t> packed(static_cast<size_t>((nk + kGroup - 1) / kGroup * pairs_of(d) * kGroup));
  pack_keys(keys, ldk, nk, d, packed.data());
  return packed;
}

// Plain tiles: strips of kStrip query rows, each against every key group.
template <typename Epi>
void plain_tiles(const uint16_t* q, int64_t ldq, int64_t nq, const uint32_t* packed, int64_t nk, int64_t d,
                 Epi& epi) {
  const int64_t groups = (nk + kGroup - 1) / kGroup, strips = (nq + kStrip - 1) / kStrip;
#pragma omp parallel for schedule(dynamic, 1) if (nq * nk * d > kParallelGrain)
  for (int64_t s = 0; s < strips; ++s)
    tile_task(q, ldq, packed, nk, d, s * kStrip, std::min(nq, (s + 1) * kStrip), 0, groups, epi);
}

void check_bf16_cpu(const char* who) {
  PF_CHECK(cpu_features().avx512_bf16,
           who << ": this CPU has no AVX-512-BF16 (vdpbf16ps); use the oneDNN product (or the float32 path)");
}

}  // namespace

template <typename T>
void bf16_merge_product(KnnMerger<T>& merger, const uint16_t* q, int64_t ldq, int64_t nq, const uint16_t* keys,
                        int64_t ldk, int64_t nk, int64_t d, int64_t row0, int64_t col0, bool exclude_self,
                        bool mirror) {
  check_bf16_cpu("bf16_merge_product");
  PF_CHECK(nq >= 0 && nk >= 0 && d >= 1, "bf16_merge_product: need nq, nk >= 0 and d >= 1");
  PF_CHECK(row0 >= 0 && row0 + nq <= merger.n_rows(), "bf16_merge_product: tile rows out of range");
  if (mirror) {
    PF_CHECK(col0 >= 0 && col0 + nk <= merger.n_rows(), "bf16_merge_product: tile columns out of range");
    PF_CHECK(col0 >= row0 + nq || row0 >= col0 + nk,
             "bf16_merge_product: a mirrored tile's rows and columns must be different merger rows");
  }
  if (nq == 0 || nk == 0) return;
  const std::vector<uint32_t> packed = packed_keys(keys, ldk, nk, d);
  auto rows_only = [&](const float* s, int64_t i, int rows, int64_t c0, int64_t ncols) {
    merge_rows(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
  };
  if (!mirror) {
    plain_tiles(q, ldq, nq, packed.data(), nk, d, rows_only);
    return;
  }
  auto both = [&](const float* s, int64_t i, int rows, int64_t c0, int64_t ncols) {
    merge_rows(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
    merge_cols(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
  };
  // A mirrored tile writes its rows' and its columns' merger rows. S x S sub-tiles in S rounds,
  // round t taking sub-tiles (a, (a + t) mod S): within a round no two share a row strip or a
  // column strip, so no merger row has two writers, and every score is computed once.
  const int64_t micro = (nq + kR - 1) / kR, groups = (nk + kGroup - 1) / kGroup;
  const int64_t threads = nq * nk * d > kParallelGrain ? max_threads() : 1;
  const int64_t S = std::max<int64_t>(1, std::min({threads, micro, groups}));
  auto row_at = [&](int64_t a) { return std::min(nq, micro * a / S * kR); };
  auto group_at = [&](int64_t b) { return groups * b / S; };
  for (int64_t t = 0; t < S; ++t) {
#pragma omp parallel for schedule(static, 1) if (S > 1)
    for (int64_t a = 0; a < S; ++a) {
      const int64_t b = (a + t) % S;
      tile_task(q, ldq, packed.data(), nk, d, row_at(a), row_at(a + 1), group_at(b), group_at(b + 1), both);
    }
  }
}

void bf16_gemm_nt(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* b, int64_t ldb, int64_t n,
                  int64_t d, float* out, int64_t ldo) {
  check_bf16_cpu("bf16_gemm_nt");
  PF_CHECK(m >= 0 && n >= 0 && d >= 1 && ldo >= n, "bf16_gemm_nt: need m, n >= 0, d >= 1 and ldo >= n");
  if (m == 0 || n == 0) return;
  const std::vector<uint32_t> packed = packed_keys(b, ldb, n, d);
  auto store = [&](const float* s, int64_t i, int rows, int64_t c0, int64_t ncols) {
    for (int r = 0; r < rows; ++r) std::memcpy(out + (i + r) * ldo + c0, s + r * kGroup, ncols * sizeof(float));
  };
  plain_tiles(a, lda, m, packed.data(), n, d, store);
}

#else  // no x86-64 GCC/Clang: the screen keeps the oneDNN product (cpu_features() finds no bf16)

template <typename T>
void bf16_merge_product(KnnMerger<T>&, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t,
                        int64_t, int64_t, int64_t, bool, bool) {
  PF_CHECK(false, "bf16_merge_product: not built for this CPU (x86-64 with GCC or Clang only)");
}

void bf16_gemm_nt(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, int64_t, float*, int64_t) {
  PF_CHECK(false, "bf16_gemm_nt: not built for this CPU (x86-64 with GCC or Clang only)");
}

#endif

template void bf16_merge_product<float>(KnnMerger<float>&, const uint16_t*, int64_t, int64_t, const uint16_t*,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool);
template void bf16_merge_product<double>(KnnMerger<double>&, const uint16_t*, int64_t, int64_t, const uint16_t*,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool);

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace pf
