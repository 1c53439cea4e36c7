// One column of Myers' bit-parallel edit distance (1999), for one 64-bit block of the pattern.
// Shared by the CPU core and the CUDA kernels, so both run the same code.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define PF_HOST_DEVICE __host__ __device__
#else
#define PF_HOST_DEVICE
#endif

namespace pf {

// Advance block (pv, mv) by one text symbol. `pos` is the symbol's position in the pattern
// (-1 if absent), `word` this block's index, `high` the block's top bit, `hin` the horizontal
// delta entering from the block below (+1 for the first block: global distance). Returns the
// delta leaving the block's top.
PF_HOST_DEVICE inline int myers_block_step(uint64_t& pv, uint64_t& mv, int64_t pos, int64_t word,
                                           uint64_t high, int hin) {
  uint64_t eq = (pos >= 0 && pos / 64 == word) ? (uint64_t{1} << (pos % 64)) : 0;
  const uint64_t p = pv, m = mv;
  const uint64_t xv = eq | m;
  if (hin < 0) eq |= 1;
  const uint64_t xh = (((eq & p) + p) ^ p) | eq;
  uint64_t ph = m | ~(xh | p);
  uint64_t mh = p & xh;
  int hout = 0;
  if (ph & high) hout = 1;
  else if (mh & high) hout = -1;
  ph <<= 1;
  mh <<= 1;
  if (hin < 0) mh |= 1;
  else if (hin > 0) ph |= 1;
  pv = mh | ~(xv | ph);
  mv = ph & xv;
  return hout;
}

}  // namespace pf
