/* The vector Philox: CD1_WIDTH blocks of the stream at a time, the same numbers as the
 * scalar code of cd1_random.c. A template: included once per vector width by
 * cd1_avx2.c and cd1_avx512.c, after cd1_simd.h (which see). */
#include "cd1_random.h"
#include "cd1_simd.h"

/* The 32-bit products a·m per lane, split into their high and low words. */
static inline void V(mul_hi_lo)(vi a, vi m, vi *hi, vi *lo) {
  vi even = vi_mul_epu32(a, m);
  vi odd = vi_mul_epu32(vi_srli64(a, 32), m);
  *lo = vi_blend_odd(even, vi_slli64(odd, 32));
  *hi = vi_blend_odd(vi_srli64(even, 32), odd);
}

/* Uniforms of blocks group0 … group0 + CD1_WIDTH − 1 (4·CD1_WIDTH floats) when no carry
 * leaves counter[0..1]. */
static inline void V(philox_uniform)(const uint32_t key[2], const uint32_t counter[4],
                                     uint64_t group0, float *out) {
  uint64_t base = ((uint64_t)counter[1] << 32 | counter[0]) + group0;
  vi c0 = vi_add(vi_set1((int)(uint32_t)base), vi_lane_index());
  vi c1 = vi_set1((int)(uint32_t)(base >> 32));
  vi c2 = vi_set1((int)counter[2]);
  vi c3 = vi_set1((int)counter[3]);
  const vi ma = vi_set1((int)PHILOX_M4x32A);
  const vi mb = vi_set1((int)PHILOX_M4x32B);
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    vi hi0, lo0, hi1, lo1;
    V(mul_hi_lo)(c0, ma, &hi0, &lo0);
    V(mul_hi_lo)(c2, mb, &hi1, &lo1);
    vi n0 = vi_xor3(hi1, c1, vi_set1((int)k0));
    vi n2 = vi_xor3(hi0, c3, vi_set1((int)k1));
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += PHILOX_W32A;
    k1 += PHILOX_W32B;
  }
  /* To floats (as uint32_to_unit_float), then from [word][block] to [block][word]. */
  const vi mantissa = vi_set1(0x7fffff);
  const vi one_bits = vi_set1(0x3f800000);
  const vf one = vf_set1(1.0f);
  vf f0 = vf_sub(vf_from_bits(vi_or(vi_and(c0, mantissa), one_bits)), one);
  vf f1 = vf_sub(vf_from_bits(vi_or(vi_and(c1, mantissa), one_bits)), one);
  vf f2 = vf_sub(vf_from_bits(vi_or(vi_and(c2, mantissa), one_bits)), one);
  vf f3 = vf_sub(vf_from_bits(vi_or(vi_and(c3, mantissa), one_bits)), one);
  V(store_stream_order)(f0, f1, f2, f3, out);
}

/* Elements [start, start + count) of the uniform stream (declared in cd1_random.h). */
void V(uniform_range)(const uint32_t key[2], const uint32_t counter[4], uint64_t start,
                      int64_t count, float *out) {
  const int per_call = 4 * CD1_WIDTH;
  uint64_t low = ((uint64_t)counter[1] << 32 | counter[0]);
  /* Scalar up to a block boundary, then per_call at a time while the counters differ
     only in their lowest word (no carry; always so for TF's seeded counters). */
  int64_t i = (int64_t)((4 - start % 4) % 4);
  if (i > count) i = count;
  if (i) uniform_range_scalar(key, counter, start, i, out);
  for (; i + per_call <= count; i += per_call) {
    uint64_t base = low + (start + (uint64_t)i) / 4;
    if (base < low || (uint32_t)base > UINT32_MAX - (uint32_t)(CD1_WIDTH - 1)) break;
    V(philox_uniform)(key, counter, (start + (uint64_t)i) / 4, out + i);
  }
  if (i < count) uniform_range_scalar(key, counter, start + (uint64_t)i, count - i, out + i);
}
