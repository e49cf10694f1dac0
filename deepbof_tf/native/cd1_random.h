/* Philox4x32-10 as TensorFlow's stateless random ops use it: the uniform float32 stream
 * of tf.random.stateless_uniform(seed=(seed0, seed1)), element by element (cd1_random.c),
 * and the vector versions of uniform_range on each ISA path (cd1_random_simd.h).
 */
#ifndef DEEPBOF_NATIVE_CD1_RANDOM_H_
#define DEEPBOF_NATIVE_CD1_RANDOM_H_

#include <stdint.h>
#include <string.h>

#include "cd1_common.h"

#define PHILOX_W32A 0x9E3779B9u
#define PHILOX_W32B 0xBB67AE85u
#define PHILOX_M4x32A 0xD2511F53u
#define PHILOX_M4x32B 0xCD9E8D57u

/* TF's seed scrambling for stateless ops: seed (s0, s1) → Philox key and counter. */
void philox_key_counter(uint64_t seed0, uint64_t seed1, uint32_t key[2],
                        uint32_t counter[4]);

/* Elements [start, start + count) of the uniform stream, scalar (reference and tails). */
void uniform_range_scalar(const uint32_t key[2], const uint32_t counter[4], uint64_t start,
                          int64_t count, float *out);

/* The same elements by the vector Philox of one path (4·8 or 4·16 floats at a time;
 * bit-identical to uniform_range_scalar). */
void uniform_range_avx2(const uint32_t key[2], const uint32_t counter[4], uint64_t start,
                        int64_t count, float *out);
void uniform_range_avx512(const uint32_t key[2], const uint32_t counter[4], uint64_t start,
                          int64_t count, float *out);

/* The 23-bit mantissa conversion of tsl/lib/random/random_distributions.h: [0, 1). */
static inline float uint32_to_unit_float(uint32_t x) {
  uint32_t bits = (x & 0x7fffffu) | 0x3f800000u;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f - 1.0f;
}

#ifdef CD1_X86
/* Elements [start, start + count) of the uniform stream on the path cd1_select_isa()
 * chose. */
static inline void uniform_range(const uint32_t key[2], const uint32_t counter[4],
                                 uint64_t start, int64_t count, float *out) {
  (cd1_use_avx512 ? uniform_range_avx512 : uniform_range_avx2)(key, counter, start, count,
                                                               out);
}
#endif

#endif /* DEEPBOF_NATIVE_CD1_RANDOM_H_ */
