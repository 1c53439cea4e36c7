#include "knn_screen.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include <cstdint>

#include "../common/parallel.h"

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

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace pf
