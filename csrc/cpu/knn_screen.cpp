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

// ---- the screen's bf16 products (AVX-512-BF16, AMX-BF16) ----
#ifdef PF_BF16_KERNEL
namespace {

// Micro-tiles are written to a small buffer (rows of kOut floats, at most 32 rows: 8 KiB, in L1)
// and merged from there before the next one is computed.
constexpr int64_t kOut = 64;
constexpr int64_t kMaxMicroRows = 32;

// Keys in the instructions' pair layout: per group of kPack keys and pair p (entries 2p, 2p + 1),
// kPack 32-bit words, one per key, entry 2p in the low half. Missing keys (past nk), pairs past
// the width (`pairs` may be padded) and the second entry of an odd width's last pair are zeros,
// whose products add exactly nothing. AMX reads 16 pairs x 16 keys of it as one tile (stride
// kPack words).
constexpr int64_t kPack = 64;

std::vector<uint32_t> packed_keys(const uint16_t* keys, int64_t ldk, int64_t nk, int64_t d, int64_t pairs) {
  const int64_t groups = (nk + kPack - 1) / kPack, full = d / 2;
  std::vector<uint32_t> out(static_cast<size_t>(groups * pairs * kPack), 0u);
  uint32_t* base = out.data();
#pragma omp parallel for schedule(static) if (nk * d > kParallelGrain)
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t* dst = base + g * pairs * kPack;
    for (int64_t c = 0; c < kPack && g * kPack + c < nk; ++c) {
      const uint16_t* src = keys + (g * kPack + c) * ldk;
      for (int64_t p = 0; p < full; ++p)
        dst[p * kPack + c] = static_cast<uint32_t>(src[2 * p]) | (static_cast<uint32_t>(src[2 * p + 1]) << 16);
      if (d & 1) dst[full * kPack + c] = src[d - 1];
    }
  }
  return out;
}

// AVX-512-BF16: 6 query rows x 64 keys in 6 x 4 accumulators (24 of the 32 zmm registers): per
// pair of entries, 4 loads of packed keys and 6 broadcasts feed 24 independent vdpbf16ps.
struct Avx512Kernel {
  static constexpr int64_t kRows = 6, kKeys = 64, kStrip = 16 * kRows;
  const uint16_t* q;
  int64_t ldq, nq, d;
  std::vector<uint32_t> packed;

  Avx512Kernel(const uint16_t* q_, int64_t ldq_, int64_t nq_, const uint16_t* keys, int64_t ldk, int64_t nk,
               int64_t d_)
      : q(q_), ldq(ldq_), nq(nq_), d(d_), packed(packed_keys(keys, ldk, nk, d_, (d_ + 1) / 2)) {}
  void begin() const {}
  void end() const {}

  // out[r * kOut + c] = <q_{i + r}, key g·64 + c> (rows past nq repeat the last row: unused)
  PF_BF16_TARGET void micro(int64_t i, int64_t g, float* out) const {
    const uint16_t* a[kRows];
    for (int r = 0; r < kRows; ++r) a[r] = q + std::min(i + r, nq - 1) * ldq;
    const uint32_t* bp = packed.data() + g * ((d + 1) / 2) * kPack;
    __m512 acc[kRows][4];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
    const int64_t full = d / 2;
    for (int64_t p = 0; p < full; ++p) {
      const uint32_t* b = bp + p * kPack;
      __m512bh bv[4];
      for (int v = 0; v < 4; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
      for (int r = 0; r < kRows; ++r) {
        int32_t w;
        std::memcpy(&w, a[r] + 2 * p, sizeof w);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(w);
        for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
      }
    }
    if (d & 1) {  // the last entry alone, paired with a zero
      const uint32_t* b = bp + full * kPack;
      __m512bh bv[4];
      for (int v = 0; v < 4; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
      for (int r = 0; r < kRows; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(a[r][d - 1]));
        for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + r * kOut + 16 * v, acc[r][v]);
  }
};

#define PF_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

// AMX-BF16: 32 query rows x 32 keys in four 16 x 16 float32 tiles (tmm0-3); per 32 entries,
// two tiles of query rows (tmm4-5) and two of keys (tmm6-7, 16 pairs x 16 keys) feed four
// tdpbf16ps. Both sides are copied once per call into tile order (each 1 KiB tile contiguous,
// a micro-tile's tiles one after the other), so a micro-tile reads two contiguous streams;
// widths are padded with zeros to a multiple of 32, rows and keys to a multiple of 32.
struct AmxKernel {
  static constexpr int64_t kRows = 32, kKeys = 32, kStrip = 4 * kRows;
  struct alignas(64) Config {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  };
  int64_t chunks;  // 32-entry slices of the padded width
  std::vector<uint16_t> qt;  // [row block of 32][chunk][half: 16 rows][32 entries]
  std::vector<uint32_t> kt;  // [key block of 32][chunk][half: 16 keys][16 pairs][16 keys] words
  Config cfg;

  AmxKernel(const uint16_t* q, int64_t ldq, int64_t nq, const uint16_t* keys, int64_t ldk, int64_t nk, int64_t d)
      : chunks((d + 31) / 32) {
    const int64_t qb = (nq + kRows - 1) / kRows, kb = (nk + kKeys - 1) / kKeys;
    qt.assign(static_cast<size_t>(qb * chunks * 1024), 0);
    kt.assign(static_cast<size_t>(kb * chunks * 512), 0u);
    uint16_t* qd = qt.data();
    uint32_t* kd = kt.data();
#pragma omp parallel for schedule(static) if (nq * d > kParallelGrain)
    for (int64_t r = 0; r < nq; ++r) {  // row r's 32 entries of chunk c: one 64-byte row of a tile
      uint16_t* dst = qd + ((r / 32) * chunks * 32 + r % 32) * 32;
      for (int64_t c = 0; c < chunks; ++c)
        std::memcpy(dst + c * 1024, q + r * ldq + c * 32, std::min<int64_t>(32, d - c * 32) * sizeof(uint16_t));
    }
#pragma omp parallel for schedule(static) if (nk * d > kParallelGrain)
    for (int64_t j = 0; j < nk; ++j) {  // key j's pair p of chunk c: word (p, j % 16) of its tile
      const uint16_t* src = keys + j * ldk;
      uint32_t* dst = kd + ((j / 32) * chunks * 2 + (j % 32) / 16) * 256 + j % 16;
      for (int64_t t = 0; t < d; t += 2) {
        uint32_t w = src[t];
        if (t + 1 < d) std::memcpy(&w, src + t, sizeof w);  // entries t, t + 1 (t in the low half)
        dst[(t / 32) * 512 + ((t % 32) / 2) * 16] = w;
      }
    }
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = 64;
      cfg.rows[t] = 16;
    }
  }
  // Tile configuration is per thread: loaded by each task, released at its end.
  PF_AMX_TARGET void begin() const { _tile_loadconfig(&cfg); }
  PF_AMX_TARGET void end() const { _tile_release(); }

  PF_AMX_TARGET void micro(int64_t i, int64_t g, float* out) const {
    const uint16_t* a = qt.data() + (i / kRows) * chunks * 1024;
    const uint32_t* b = kt.data() + g * chunks * 512;
    for (int64_t c = 0; c < chunks; ++c) {
      if (c == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      _tile_loadd(4, a + c * 1024, 64);
      _tile_loadd(5, a + c * 1024 + 512, 64);
      _tile_loadd(6, b + c * 512, 64);
      _tile_loadd(7, b + c * 512 + 256, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    const int64_t so = kOut * sizeof(float);
    _tile_stored(0, out, so);
    _tile_stored(1, out + 16, so);
    _tile_stored(2, out + 16 * kOut, so);
    _tile_stored(3, out + 16 * kOut + 16, so);
  }
};

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
PF_BF16_TARGET void merge_rows(KnnMerger<T>& m, const float* s, int64_t rows, int64_t ncols, int64_t row,
                               int64_t col, bool exclude_self) {
  const T* bars = m.bars();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row + r;
    const float* sr = s + r * kOut;
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
PF_BF16_TARGET void merge_cols(KnnMerger<T>& m, const float* s, int64_t rows, int64_t ncols, int64_t row,
                               int64_t col, bool exclude_self) {
  const T* bars = m.bars();
  for (int64_t c = 0; c < ncols; c += 16) {
    const __mmask16 valid = first_lanes(ncols - c);
    for (int64_t r = 0; r < rows; ++r) {
      const float* sr = s + r * kOut;
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

// Query rows [i0, i1) (i0 a multiple of K::kRows) against key groups [g0, g1) of K::kKeys, a
// micro-tile at a time, each handed to epi(scores, first row, rows, first key, keys) while it is
// still in L1.
template <class K, class Epi>
void tile_task(const K& kern, int64_t nq, int64_t nk, int64_t i0, int64_t i1, int64_t g0, int64_t g1, Epi& epi) {
  alignas(64) float out[kMaxMicroRows * kOut];
  kern.begin();
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t c0 = g * K::kKeys, ncols = std::min(K::kKeys, nk - c0);
    for (int64_t i = i0; i < i1; i += K::kRows) {
      kern.micro(i, g, out);
      epi(out, i, std::min(K::kRows, std::min(i1, nq) - i), c0, ncols);
    }
  }
  kern.end();
}

// Plain tiles: strips of query rows, each against every key group.
template <class K, class Epi>
void plain_tiles(const K& kern, int64_t nq, int64_t nk, int64_t d, Epi& epi) {
  const int64_t groups = (nk + K::kKeys - 1) / K::kKeys, strips = (nq + K::kStrip - 1) / K::kStrip;
#pragma omp parallel for schedule(dynamic, 1) if (nq * nk * d > kParallelGrain)
  for (int64_t s = 0; s < strips; ++s)
    tile_task(kern, nq, nk, s * K::kStrip, std::min(nq, (s + 1) * K::kStrip), 0, groups, epi);
}

// A mirrored tile writes its rows' and its columns' merger rows. S x S sub-tiles in S rounds,
// round t taking sub-tiles (a, (a + t) mod S): within a round no two share a row strip or a
// column strip, so no merger row has two writers, and every score is computed once.
template <class K, class Epi>
void mirrored_tiles(const K& kern, int64_t nq, int64_t nk, int64_t d, Epi& epi) {
  const int64_t micro = (nq + K::kRows - 1) / K::kRows, groups = (nk + K::kKeys - 1) / K::kKeys;
  const int64_t threads = nq * nk * d > kParallelGrain ? max_threads() : 1;
  const int64_t S = std::max<int64_t>(1, std::min({threads, micro, groups}));
  auto row_at = [&](int64_t a) { return std::min(nq, micro * a / S * K::kRows); };
  auto group_at = [&](int64_t b) { return groups * b / S; };
  for (int64_t t = 0; t < S; ++t) {
#pragma omp parallel for schedule(static, 1) if (S > 1)
    for (int64_t a = 0; a < S; ++a) {
      const int64_t b = (a + t) % S;
      tile_task(kern, nq, nk, row_at(a), row_at(a + 1), group_at(b), group_at(b + 1), epi);
    }
  }
}

Bf16Isa chosen_isa(Bf16Isa isa, const char* who) {
  const CpuFeatures& f = cpu_features();
  if (isa == Bf16Isa::automatic) isa = (f.amx_bf16 && f.amx_permitted) ? Bf16Isa::amx : Bf16Isa::avx512;
  if (isa == Bf16Isa::amx)
    PF_CHECK(f.amx_bf16 && f.amx_permitted && f.avx512_bf16,
             who << ": AMX-BF16 is not usable here (" << (f.amx_note.empty() ? "no AVX-512-BF16" : f.amx_note)
                 << "); use isa='avx512_bf16' or the oneDNN product");
  else
    PF_CHECK(f.avx512_bf16, who << ": this CPU has no AVX-512-BF16 (vdpbf16ps); use the oneDNN product (or the "
                                   "float32 path)");
  return isa;
}

template <class K, typename T>
void merge_with(const K& kern, KnnMerger<T>& merger, int64_t nq, int64_t nk, int64_t d, int64_t row0, int64_t col0,
                bool exclude_self, bool mirror) {
  if (!mirror) {
    auto rows_only = [&](const float* s, int64_t i, int64_t rows, int64_t c0, int64_t ncols) {
      merge_rows(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
    };
    plain_tiles(kern, nq, nk, d, rows_only);
    return;
  }
  auto both = [&](const float* s, int64_t i, int64_t rows, int64_t c0, int64_t ncols) {
    merge_rows(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
    merge_cols(merger, s, rows, ncols, row0 + i, col0 + c0, exclude_self);
  };
  mirrored_tiles(kern, nq, nk, d, both);
}

template <class K>
void store_with(const K& kern, int64_t m, int64_t n, int64_t d, float* out, int64_t ldo) {
  auto store = [&](const float* s, int64_t i, int64_t rows, int64_t c0, int64_t ncols) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + (i + r) * ldo + c0, s + r * kOut, ncols * sizeof(float));
  };
  plain_tiles(kern, m, n, d, store);
}

}  // namespace

template <typename T>
void bf16_merge_product(KnnMerger<T>& merger, const uint16_t* q, int64_t ldq, int64_t nq, const uint16_t* keys,
                        int64_t ldk, int64_t nk, int64_t d, int64_t row0, int64_t col0, bool exclude_self,
                        bool mirror, Bf16Isa isa) {
  isa = chosen_isa(isa, "bf16_merge_product");
  PF_CHECK(nq >= 0 && nk >= 0 && d >= 1, "bf16_merge_product: need nq, nk >= 0 and d >= 1");
  PF_CHECK(row0 >= 0 && row0 + nq <= merger.n_rows(), "bf16_merge_product: tile rows out of range");
  if (mirror) {
    PF_CHECK(col0 >= 0 && col0 + nk <= merger.n_rows(), "bf16_merge_product: tile columns out of range");
    PF_CHECK(col0 >= row0 + nq || row0 >= col0 + nk,
             "bf16_merge_product: a mirrored tile's rows and columns must be different merger rows");
  }
  if (nq == 0 || nk == 0) return;
  if (isa == Bf16Isa::amx)
    merge_with(AmxKernel(q, ldq, nq, keys, ldk, nk, d), merger, nq, nk, d, row0, col0, exclude_self, mirror);
  else
    merge_with(Avx512Kernel(q, ldq, nq, keys, ldk, nk, d), merger, nq, nk, d, row0, col0, exclude_self, mirror);
}

void bf16_gemm_nt(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* b, int64_t ldb, int64_t n,
                  int64_t d, float* out, int64_t ldo, Bf16Isa isa) {
  isa = chosen_isa(isa, "bf16_gemm_nt");
  PF_CHECK(m >= 0 && n >= 0 && d >= 1 && ldo >= n, "bf16_gemm_nt: need m, n >= 0, d >= 1 and ldo >= n");
  if (m == 0 || n == 0) return;
  if (isa == Bf16Isa::amx)
    store_with(AmxKernel(a, lda, m, b, ldb, n, d), m, n, d, out, ldo);
  else
    store_with(Avx512Kernel(a, lda, m, b, ldb, n, d), m, n, d, out, ldo);
}

#else  // no x86-64 GCC/Clang: the screen keeps the oneDNN product (cpu_features() finds no bf16)

template <typename T>
void bf16_merge_product(KnnMerger<T>&, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t,
                        int64_t, int64_t, int64_t, bool, bool, Bf16Isa) {
  PF_CHECK(false, "bf16_merge_product: not built for this CPU (x86-64 with GCC or Clang only)");
}

void bf16_gemm_nt(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, int64_t, float*, int64_t,
                  Bf16Isa) {
  PF_CHECK(false, "bf16_gemm_nt: not built for this CPU (x86-64 with GCC or Clang only)");
}

#endif

template void bf16_merge_product<float>(KnnMerger<float>&, const uint16_t*, int64_t, int64_t, const uint16_t*,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, Bf16Isa);
template void bf16_merge_product<double>(KnnMerger<double>&, const uint16_t*, int64_t, int64_t, const uint16_t*,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, Bf16Isa);

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace pf
