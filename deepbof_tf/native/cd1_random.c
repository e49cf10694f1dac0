/* Philox4x32-10, as TF's stateless random ops use it (portable C): the reference the
 * vector versions (cd1_random_simd.h) are tested against, and their tails. */
#include "cd1_random.h"

static void philox10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = (uint64_t)PHILOX_M4x32A * c0;
    uint64_t p1 = (uint64_t)PHILOX_M4x32B * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = (uint32_t)p0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += PHILOX_W32A;
    k1 += PHILOX_W32B;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void philox_key_counter(uint64_t seed0, uint64_t seed1, uint32_t key[2],
                        uint32_t counter[4]) {
  const uint32_t fixed_key[2] = {0x3ec8f720u, 0x02461e29u};
  uint32_t ctr[4] = {(uint32_t)seed0, (uint32_t)(seed0 >> 32), (uint32_t)seed1,
                     (uint32_t)(seed1 >> 32)};
  uint32_t mix[4];
  philox10(ctr, fixed_key, mix);
  key[0] = mix[0];
  key[1] = mix[1];
  counter[0] = 0;
  counter[1] = 0;
  counter[2] = mix[2];
  counter[3] = mix[3];
}

/* Philox output block number `group` of the stream: the counter advanced by `group`
 * (a 128-bit add, as PhiloxRandom::Skip). */
static inline void philox_block(const uint32_t key[2], const uint32_t counter[4],
                                uint64_t group, uint32_t out[4]) {
  uint32_t c[4];
  uint64_t lo = ((uint64_t)counter[1] << 32 | counter[0]);
  uint64_t sum = lo + group;
  c[0] = (uint32_t)sum;
  c[1] = (uint32_t)(sum >> 32);
  c[2] = counter[2];
  c[3] = counter[3];
  if (sum < lo) { /* carry into the upper 64 bits */
    if (++c[2] == 0) ++c[3];
  }
  philox10(c, key, out);
}

void uniform_range_scalar(const uint32_t key[2], const uint32_t counter[4], uint64_t start,
                          int64_t count, float *out) {
  uint32_t block[4];
  uint64_t current = UINT64_MAX;
  for (int64_t i = 0; i < count; ++i) {
    uint64_t index = start + (uint64_t)i;
    if (index / 4 != current) {
      current = index / 4;
      philox_block(key, counter, current, block);
    }
    out[i] = uint32_to_unit_float(block[index % 4]);
  }
}
