/* Native CPU kernel for one CD-1 epoch of the Gaussian–binary sparse RBM.
 *
 * Why a kernel of our own: CD-1 at the paper's sizes (B = 100, D ≈ 150, H = 1024) is a
 * serial chain of five small products per minibatch. Issued one TF op at a time, each
 * product is split across the cores and re-reads W from shared cache, and the chain
 * reaches under half of this machine's dense matmul rate. Here every thread owns a
 * fixed range of hidden units for the whole epoch: its slice of W, ΔW, c, Δc and q
 * stays in its own core's cache, four of the five products need no communication, and
 * the fifth (v⁻ = hWᵀ + b, a sum over hidden units) needs one small reduction and one
 * barrier per step.
 *
 * The update is the one of SparseRBMTrainer.step in sparse_rbm.py (same order, same
 * formulas). The sampling draws are bit-identical to the TF path's
 * tf.random.stateless_uniform([B, H], seed=(seed0, seed1)): TF's Philox4x32-10 with
 * the seed scrambled into a key and counter as StatelessRandomGetKeyCounter does, and
 * the 23-bit mantissa float conversion of tsl/lib/random/random_distributions.h.
 * The partial sums of hWᵀ are formed over fixed 128-unit chunks and added in chunk
 * order, so the result does not depend on the number of threads.
 *
 * Each thread keeps its W and ΔW packed (16-column panels) for the whole epoch; p⁺ and
 * p⁻ are written straight into the packed operand of the gradient product, and the
 * weight update is that product's epilogue, tile by tile.
 *
 * Two code paths, chosen at run time (isa()): AVX2/FMA, with 6×16 product tiles and
 * 8-lane element-wise code, and on CPUs with AVX-512F 10×32 tiles (the first three
 * products reading their row-major A in place) with 16-lane σ, Philox and update. Both
 * compute every float with the same operations in the same order, so they give
 * bit-identical results (tested). The module builds everywhere but reports
 * supported() = False on CPUs without AVX2+FMA (the Python side then uses TF).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CD1_X86 1
#include <immintrin.h>
#endif

/* Hidden units per partial sum of hWᵀ: fixed, so results do not depend on threads. */
#define CHUNK 128
#define MR 6      /* rows of an A panel for the AVX2 tiles (6 × 16) */
#define MR512 10  /* rows of an A panel for the AVX-512 tiles (10 × 32) */
#define NR 16

/* Which path (tiles and element-wise code) runs: set per epoch by select_isa(), with
 * the panel height of A that goes with it. */
static int use_avx512 = 0;
static int mr = MR;

/* ---------------------------------------------------------------------------------
 * Philox4x32-10, as TF's stateless random ops use it (portable C).
 * ------------------------------------------------------------------------------- */
#define PHILOX_W32A 0x9E3779B9u
#define PHILOX_W32B 0xBB67AE85u
#define PHILOX_M4x32A 0xD2511F53u
#define PHILOX_M4x32B 0xCD9E8D57u

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

/* TF's seed scrambling for stateless ops: seed (s0, s1) → Philox key and counter. */
static void philox_key_counter(uint64_t seed0, uint64_t seed1, uint32_t key[2],
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

static inline float uint32_to_unit_float(uint32_t x) {
  uint32_t bits = (x & 0x7fffffu) | 0x3f800000u;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f - 1.0f;
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

/* Elements [start, start + count) of the uniform stream, scalar (reference and tails). */
static void uniform_range_scalar(const uint32_t key[2], const uint32_t counter[4],
                                 uint64_t start, int64_t count, float *out) {
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

#ifdef CD1_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")

/* ---------------------------------------------------------------------------------
 * Philox, eight blocks at a time (AVX2); same numbers as philox_block.
 * ------------------------------------------------------------------------------- */
static inline void mul_hi_lo(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
  __m256i even = _mm256_mul_epu32(a, m);
  __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/* Uniforms of blocks group0 … group0+7 (32 floats) when no carry leaves counter[0..1]. */
static inline void philox8_uniform(const uint32_t key[2], const uint32_t counter[4],
                                   uint64_t group0, float *out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint64_t base = ((uint64_t)counter[1] << 32 | counter[0]) + group0;
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)base), lane);
  __m256i c1 = _mm256_set1_epi32((int)(uint32_t)(base >> 32));
  __m256i c2 = _mm256_set1_epi32((int)counter[2]);
  __m256i c3 = _mm256_set1_epi32((int)counter[3]);
  const __m256i ma = _mm256_set1_epi32((int)PHILOX_M4x32A);
  const __m256i mb = _mm256_set1_epi32((int)PHILOX_M4x32B);
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mul_hi_lo(c0, ma, &hi0, &lo0);
    mul_hi_lo(c2, mb, &hi1, &lo1);
    __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1),
                                  _mm256_set1_epi32((int)k0));
    __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3),
                                  _mm256_set1_epi32((int)k1));
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += PHILOX_W32A;
    k1 += PHILOX_W32B;
  }
  /* To floats, then from [word][block] to the stream order [block][word]. */
  const __m256i mantissa = _mm256_set1_epi32(0x7fffff);
  const __m256i one_bits = _mm256_set1_epi32(0x3f800000);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 f0 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(c0, mantissa), one_bits)), one);
  __m256 f1 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(c1, mantissa), one_bits)), one);
  __m256 f2 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(c2, mantissa), one_bits)), one);
  __m256 f3 = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(c3, mantissa), one_bits)), one);
  __m256 t0 = _mm256_unpacklo_ps(f0, f1); /* b0w0 b0w1 b1w0 b1w1 | b4.. b5.. */
  __m256 t1 = _mm256_unpackhi_ps(f0, f1); /* b2w0 b2w1 b3w0 b3w1 | b6.. b7.. */
  __m256 t2 = _mm256_unpacklo_ps(f2, f3);
  __m256 t3 = _mm256_unpackhi_ps(f2, f3);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44); /* block 0 | block 4 */
  __m256 s1 = _mm256_shuffle_ps(t0, t2, 0xEE); /* block 1 | block 5 */
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44); /* block 2 | block 6 */
  __m256 s3 = _mm256_shuffle_ps(t1, t3, 0xEE); /* block 3 | block 7 */
  _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(s0, s1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(s2, s3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(s0, s1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(s2, s3, 0x31));
}

/* Elements [start, start + count) of the uniform stream. */
static void uniform_range(const uint32_t key[2], const uint32_t counter[4],
                          uint64_t start, int64_t count, float *out) {
  uint64_t low = ((uint64_t)counter[1] << 32 | counter[0]);
  /* Scalar up to a block boundary, then 32 at a time while the eight counters differ
     only in their lowest word (no carry; always so for TF's seeded counters). */
  int64_t i = (int64_t)((4 - start % 4) % 4);
  if (i > count) i = count;
  if (i) uniform_range_scalar(key, counter, start, i, out);
  for (; i + 32 <= count; i += 32) {
    uint64_t base = low + (start + (uint64_t)i) / 4;
    if (base < low || (uint32_t)base > UINT32_MAX - 7u) break;
    philox8_uniform(key, counter, (start + (uint64_t)i) / 4, out + i);
  }
  if (i < count) uniform_range_scalar(key, counter, start + (uint64_t)i, count - i, out + i);
}

/* ---------------------------------------------------------------------------------
 * The logistic function, 8 lanes: σ(x) = 1 / (1 + e^−x) with e^−x = 2^n · p(r) (range
 * reduction by ln 2, a degree-6 polynomial on [−ln2/2, ln2/2]; about 1 ulp), and
 * 1 + 2^n · p as one fused multiply-add. Every rounding step is an explicit intrinsic
 * (no a·b + c left for the compiler to fuse or not), so sigmoid16 below can repeat it
 * operation for operation and give the same floats.
 * ------------------------------------------------------------------------------- */
static inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  x = _mm256_sub_ps(_mm256_setzero_ps(), x);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  /* r = x − n·ln2 with ln2 split into an exactly representable head and a tail. */
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                 _mm256_set1_epi32(127)), 23);
  return _mm256_div_ps(one, _mm256_fmadd_ps(p, _mm256_castsi256_ps(e), one));
}

/* p[r][j] ← σ(p[r][j] + bias[j]) for r < rows, j < cols, and sums[j] = Σ_r p[r][j];
 * p[r][j] is p[r·row_stride + (j / NR)·panel_stride + j % NR] (row-major: cols, NR; the
 * packed B operand of a product: NR, NR·k).
 * With states: states[r][j] = 1[p[r][j] > u], u the element r·stream_row + stream_offset
 * + j of the step's uniform stream (scratch: `uniform`, cols + 32 floats). */
static void logistic_rows(float *p, int64_t row_stride, int64_t panel_stride,
                          const float *bias, int rows, int cols, float *sums,
                          float *states, const uint32_t *key, const uint32_t *counter,
                          int64_t stream_row, int64_t stream_offset, float *uniform) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int j = 0; j < cols; ++j) sums[j] = 0.0f;
  for (int r = 0; r < rows; ++r) {
    float *row = p + (int64_t)r * row_stride;
    float *state_row = states ? states + (int64_t)r * cols : NULL;
    if (states)
      uniform_range(key, counter, (uint64_t)(r * stream_row + stream_offset), cols, uniform);
    for (int j = 0; j < cols; j += 8) {
      int lanes = cols - j < 8 ? cols - j : 8;
      float x[8] = {0}, u[8] = {0}, out[8];
      float *at = row + (j / NR) * panel_stride + j % NR;
      const float *x_ptr = at, *b_ptr = bias + j, *u_ptr = uniform + j;
      float b[8] = {0};
      if (lanes < 8) { /* the tail goes through the same 8-lane code */
        for (int t = 0; t < lanes; ++t) {
          x[t] = at[t];
          b[t] = bias[j + t];
          if (states) u[t] = uniform[j + t];
        }
        x_ptr = x; b_ptr = b; u_ptr = u;
      }
      __m256 prob = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x_ptr), _mm256_loadu_ps(b_ptr)));
      _mm256_storeu_ps(out, prob);
      __m256 on = states ? _mm256_and_ps(_mm256_cmp_ps(prob, _mm256_loadu_ps(u_ptr),
                                                       _CMP_GT_OQ), one)
                         : _mm256_setzero_ps();
      if (lanes == 8) {
        _mm256_storeu_ps(at, prob);
        _mm256_storeu_ps(sums + j, _mm256_add_ps(_mm256_loadu_ps(sums + j), prob));
        if (states) _mm256_storeu_ps(state_row + j, on);
      } else {
        float state_values[8];
        _mm256_storeu_ps(state_values, on);
        for (int t = 0; t < lanes; ++t) {
          at[t] = out[t];
          sums[j + t] += out[t];
          if (states) state_row[j + t] = state_values[t];
        }
      }
    }
  }
}

/* ΔW ← m·ΔW + (g − decay·W); W ← W + ΔW over n contiguous units, 8 lanes with a masked
 * tail (so every unit goes through the same fused operations). The callers pass a
 * panel row of the packed W and ΔW (see gemm_packed_update). */
static void update_weights8(float *w, float *dw, const float *g, int n, float momentum,
                            float decay) {
  const __m256 m8 = _mm256_set1_ps(momentum), decay8 = _mm256_set1_ps(decay);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int j = 0; j < n; j += 8) {
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane);
    __m256 wj = _mm256_maskload_ps(w + j, mask);
    __m256 step_value = _mm256_fnmadd_ps(decay8, wj, _mm256_maskload_ps(g + j, mask));
    __m256 inc = _mm256_fmadd_ps(m8, _mm256_maskload_ps(dw + j, mask), step_value);
    _mm256_maskstore_ps(dw + j, mask, inc);
    _mm256_maskstore_ps(w + j, mask, _mm256_add_ps(wj, inc));
  }
}

/* ---------------------------------------------------------------------------------
 * The element-wise steps with 512-bit registers: the same operations as the 8-lane
 * code above, in the same order, on 16 lanes (so the same floats; the tests compare
 * both paths bit for bit). Used when use_avx512 is set.
 * ------------------------------------------------------------------------------- */
/* AVX-512F only: the run-time check (avx512_supported) asks for nothing more. */
#define TARGET512 __attribute__((target("avx512f,avx2,fma")))

TARGET512 static inline void mul_hi_lo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
  __m512i even = _mm512_mul_epu32(a, m);
  __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

/* Uniforms of blocks group0 … group0+15 (64 floats) when no carry leaves counter[0..1]. */
TARGET512 static inline void philox16_uniform(const uint32_t key[2],
                                              const uint32_t counter[4], uint64_t group0,
                                              float *out) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                         15);
  uint64_t base = ((uint64_t)counter[1] << 32 | counter[0]) + group0;
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base), lane);
  __m512i c1 = _mm512_set1_epi32((int)(uint32_t)(base >> 32));
  __m512i c2 = _mm512_set1_epi32((int)counter[2]);
  __m512i c3 = _mm512_set1_epi32((int)counter[3]);
  const __m512i ma = _mm512_set1_epi32((int)PHILOX_M4x32A);
  const __m512i mb = _mm512_set1_epi32((int)PHILOX_M4x32B);
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mul_hi_lo16(c0, ma, &hi0, &lo0);
    mul_hi_lo16(c2, mb, &hi1, &lo1);
    /* hi ^ c ^ k as one three-input logic op (0x96: odd parity). */
    __m512i n0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32((int)k0), 0x96);
    __m512i n2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32((int)k1), 0x96);
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += PHILOX_W32A;
    k1 += PHILOX_W32B;
  }
  const __m512i mantissa = _mm512_set1_epi32(0x7fffff);
  const __m512i one_bits = _mm512_set1_epi32(0x3f800000);
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 f0 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(c0, mantissa), one_bits)), one);
  __m512 f1 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(c1, mantissa), one_bits)), one);
  __m512 f2 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(c2, mantissa), one_bits)), one);
  __m512 f3 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(c3, mantissa), one_bits)), one);
  /* [word][block] → [block][word]: within each 128-bit lane as in philox8_uniform, which
     leaves block b in lane b / 4 of s(b % 4); then a 4 × 4 transpose of the lanes. */
  __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
  __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
  __m512 s0 = _mm512_shuffle_ps(t0, t2, 0x44); /* blocks 0 | 4 | 8 | 12 */
  __m512 s1 = _mm512_shuffle_ps(t0, t2, 0xEE); /* blocks 1 | 5 | 9 | 13 */
  __m512 s2 = _mm512_shuffle_ps(t1, t3, 0x44); /* blocks 2 | 6 | 10 | 14 */
  __m512 s3 = _mm512_shuffle_ps(t1, t3, 0xEE); /* blocks 3 | 7 | 11 | 15 */
  __m512 a = _mm512_shuffle_f32x4(s0, s1, 0x44); /* 0 4 1 5 */
  __m512 b = _mm512_shuffle_f32x4(s2, s3, 0x44); /* 2 6 3 7 */
  __m512 c = _mm512_shuffle_f32x4(s0, s1, 0xEE); /* 8 12 9 13 */
  __m512 d = _mm512_shuffle_f32x4(s2, s3, 0xEE); /* 10 14 11 15 */
  _mm512_storeu_ps(out + 0, _mm512_shuffle_f32x4(a, b, 0x88));
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(a, b, 0xDD));
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(c, d, 0x88));
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(c, d, 0xDD));
}

/* uniform_range with 16 blocks at a time. */
TARGET512 static void uniform_range16(const uint32_t key[2], const uint32_t counter[4],
                                      uint64_t start, int64_t count, float *out) {
  uint64_t low = ((uint64_t)counter[1] << 32 | counter[0]);
  int64_t i = (int64_t)((4 - start % 4) % 4);
  if (i > count) i = count;
  if (i) uniform_range_scalar(key, counter, start, i, out);
  for (; i + 64 <= count; i += 64) {
    uint64_t base = low + (start + (uint64_t)i) / 4;
    if (base < low || (uint32_t)base > UINT32_MAX - 15u) break;
    philox16_uniform(key, counter, (start + (uint64_t)i) / 4, out + i);
  }
  if (i < count) uniform_range(key, counter, start + (uint64_t)i, count - i, out + i);
}

TARGET512 static inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  x = _mm512_sub_ps(_mm512_setzero_ps(), x);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, one));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n),
                                                 _mm512_set1_epi32(127)), 23);
  return _mm512_div_ps(one, _mm512_fmadd_ps(p, _mm512_castsi512_ps(e), one));
}

/* logistic_rows on 16 lanes (masked tail). */
TARGET512 static void logistic_rows16(float *p, int64_t row_stride, int64_t panel_stride,
                                      const float *bias, int rows, int cols,
                                      float *sums, float *states, const uint32_t *key,
                                      const uint32_t *counter, int64_t stream_row,
                                      int64_t stream_offset, float *uniform) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int j = 0; j < cols; ++j) sums[j] = 0.0f;
  for (int r = 0; r < rows; ++r) {
    float *row = p + (int64_t)r * row_stride;
    float *state_row = states ? states + (int64_t)r * cols : NULL;
    if (states)
      uniform_range16(key, counter, (uint64_t)(r * stream_row + stream_offset), cols,
                      uniform);
    for (int j = 0; j < cols; j += 16) {
      __mmask16 m = cols - j >= 16 ? (__mmask16)0xFFFF
                                   : (__mmask16)((1u << (cols - j)) - 1u);
      float *at = row + (j / NR) * panel_stride;
      __m512 prob = sigmoid16(_mm512_add_ps(_mm512_maskz_loadu_ps(m, at),
                                            _mm512_maskz_loadu_ps(m, bias + j)));
      _mm512_mask_storeu_ps(at, m, prob);
      _mm512_mask_storeu_ps(sums + j, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, sums + j), prob));
      if (states) {
        __mmask16 on = _mm512_cmp_ps_mask(prob, _mm512_maskz_loadu_ps(m, uniform + j),
                                          _CMP_GT_OQ);
        _mm512_mask_storeu_ps(state_row + j, m, _mm512_maskz_mov_ps(on, one));
      }
    }
  }
}

/* update_weights8 on 16 lanes. */
TARGET512 static void update_weights16(float *w, float *dw, const float *g, int n,
                                       float momentum, float decay) {
  const __m512 m16 = _mm512_set1_ps(momentum), decay16 = _mm512_set1_ps(decay);
  for (int j = 0; j < n; j += 16) {
    __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);
    __m512 wj = _mm512_maskz_loadu_ps(m, w + j);
    __m512 step_value = _mm512_fnmadd_ps(decay16, wj, _mm512_maskz_loadu_ps(m, g + j));
    __m512 inc = _mm512_fmadd_ps(m16, _mm512_maskz_loadu_ps(m, dw + j), step_value);
    _mm512_mask_storeu_ps(dw + j, m, inc);
    _mm512_mask_storeu_ps(w + j, m, _mm512_add_ps(wj, inc));
  }
}

/* ---------------------------------------------------------------------------------
 * Packed GEMM: C[M×N] = A[M×K]·B[K×N] with A packed in panels of MR rows
 * ([panel][k][MR]) and B in panels of NR columns ([panel][k][NR]), zero-padded.
 * ------------------------------------------------------------------------------- */
static void pack_a(float *dst, int k_total, int k_offset, const float *src, int m,
                   int k, int64_t row_stride, int64_t col_stride, float scale) {
  int panels = (m + mr - 1) / mr;
  if (row_stride == 1) { /* the rows of a panel are adjacent in src: copy them as runs */
    for (int p = 0; p < panels; ++p) {
      float *panel = dst + (int64_t)p * mr * k_total + (int64_t)k_offset * mr;
      int rows = m - p * mr < mr ? m - p * mr : mr;
      for (int kk = 0; kk < k; ++kk) {
        const float *s = src + (int64_t)kk * col_stride + p * mr;
        float *out = panel + (int64_t)kk * mr;
        for (int i = 0; i < rows; ++i) out[i] = scale * s[i];
        for (int i = rows; i < mr; ++i) out[i] = 0.0f;
      }
    }
    return;
  }
  for (int p = 0; p < panels; ++p) {
    float *panel = dst + (int64_t)p * mr * k_total + (int64_t)k_offset * mr;
    for (int i = 0; i < mr; ++i) {
      int row = p * mr + i;
      if (row < m) {
        const float *s = src + row * row_stride;
        for (int kk = 0; kk < k; ++kk) panel[kk * mr + i] = scale * s[kk * col_stride];
      } else {
        for (int kk = 0; kk < k; ++kk) panel[kk * mr + i] = 0.0f;
      }
    }
  }
}

/* B[k × n], rows `row_stride` apart and contiguous within a row, packed into NR-column
 * panels ([panel][k][NR], zero-padded); the transposed case is pack_transposed_w. */
static void pack_b(float *dst, const float *src, int k, int n, int64_t row_stride) {
  int panels = (n + NR - 1) / NR;
  for (int p = 0; p < panels; ++p) {
    float *panel = dst + (int64_t)p * NR * k;
    int cols = n - p * NR < NR ? n - p * NR : NR;
    for (int kk = 0; kk < k; ++kk) {
      memcpy(panel + kk * NR, src + kk * row_stride + p * NR, cols * sizeof(float));
      for (int j = cols; j < NR; ++j) panel[kk * NR + j] = 0.0f;
    }
  }
}

/* 8×8 transpose of rows src[0..7] (stride src_stride) into dst (stride dst_stride). */
static inline void transpose8(const float *src, int64_t src_stride, float *dst,
                              int64_t dst_stride) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * src_stride), r1 = _mm256_loadu_ps(src + 1 * src_stride);
  __m256 r2 = _mm256_loadu_ps(src + 2 * src_stride), r3 = _mm256_loadu_ps(src + 3 * src_stride);
  __m256 r4 = _mm256_loadu_ps(src + 4 * src_stride), r5 = _mm256_loadu_ps(src + 5 * src_stride);
  __m256 r6 = _mm256_loadu_ps(src + 6 * src_stride), r7 = _mm256_loadu_ps(src + 7 * src_stride);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The B operand of hWᵀ for local units [c0, c0 + kc) — B(k = j, n = d) = W[d][j] —
 * packed ([d-panel][j][NR]) by transposing the W operand already packed for vW
 * (w_packed, [j-panel][d][NR], d < num_visible). c0 is a multiple of NR. */
static void pack_transposed_w(float *dst, const float *w_packed, int num_visible, int c0,
                              int kc) {
  int d_panels = (num_visible + NR - 1) / NR;
  for (int dp = 0; dp < d_panels; ++dp) {
    float *panel = dst + (int64_t)dp * NR * kc;
    int rows = num_visible - dp * NR < NR ? num_visible - dp * NR : NR;
    for (int jj = 0; jj < kc; jj += NR) {
      const float *block = w_packed + (int64_t)((c0 + jj) / NR) * NR * num_visible +
                           (int64_t)dp * NR * NR; /* rows d = dp·NR …, 16 j's each */
      int cols = kc - jj < NR ? kc - jj : NR;
      if (rows == NR && cols == NR) {
        transpose8(block, NR, panel + (int64_t)jj * NR, NR);
        transpose8(block + 8, NR, panel + (int64_t)(jj + 8) * NR, NR);
        transpose8(block + 8 * NR, NR, panel + (int64_t)jj * NR + 8, NR);
        transpose8(block + 8 * NR + 8, NR, panel + (int64_t)(jj + 8) * NR + 8, NR);
      } else {
        for (int j = 0; j < cols; ++j)
          for (int t = 0; t < NR; ++t)
            panel[(int64_t)(jj + j) * NR + t] = t < rows ? block[t * NR + j] : 0.0f;
      }
    }
  }
}

static inline void micro_kernel(int k, const float *restrict a, const float *restrict b,
                                float *restrict c, int64_t ldc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int kk = 0; kk < k; ++kk) {
    __m256 b0 = _mm256_load_ps(b + kk * NR);
    __m256 b1 = _mm256_load_ps(b + kk * NR + 8);
    __m256 x;
    x = _mm256_broadcast_ss(a + kk * MR + 0);
    c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + kk * MR + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + kk * MR + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + kk * MR + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + kk * MR + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + kk * MR + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  _mm256_storeu_ps(c + 0 * ldc, c00); _mm256_storeu_ps(c + 0 * ldc + 8, c01);
  _mm256_storeu_ps(c + 1 * ldc, c10); _mm256_storeu_ps(c + 1 * ldc + 8, c11);
  _mm256_storeu_ps(c + 2 * ldc, c20); _mm256_storeu_ps(c + 2 * ldc + 8, c21);
  _mm256_storeu_ps(c + 3 * ldc, c30); _mm256_storeu_ps(c + 3 * ldc + 8, c31);
  _mm256_storeu_ps(c + 4 * ldc, c40); _mm256_storeu_ps(c + 4 * ldc + 8, c41);
  _mm256_storeu_ps(c + 5 * ldc, c50); _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* The same tile product on 10 rows and two adjacent B panels (10 × 32) with 512-bit
 * registers. Each output lane sees exactly the AVX2 kernel's sequence of fused
 * multiply-adds (one per k, in k order), so both paths give bit-identical results. The
 * twenty accumulators keep both FMA ports busy; per k, two loads of B and ten
 * broadcasts of A feed twenty FMAs. A is packed in panels of MR512 rows. The second
 * 16 columns go to c + second (NR for a row-major C). */
#define ROW512(i)                                                     \
  x = _mm512_set1_ps(a[i]);                                           \
  c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                          \
  c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1)
#define STORE512(i)                                                   \
  _mm512_storeu_ps(c + i * ldc, c##i##0);                             \
  _mm512_storeu_ps(c + i * ldc + second, c##i##1)
__attribute__((target("avx512f,avx2,fma")))
static void micro_kernel_10x32(int k, const float *restrict a, const float *restrict b0p,
                               const float *restrict b1p, float *restrict c, int64_t ldc,
                               int64_t second) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps();
  __m512 c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
  const float *a_end = a + (int64_t)k * MR512;
#pragma GCC unroll 2
  for (; a < a_end; a += MR512, b0p += NR, b1p += NR) {
    __m512 b0 = _mm512_load_ps(b0p);
    __m512 b1 = _mm512_load_ps(b1p);
    __m512 x;
    ROW512(0); ROW512(1); ROW512(2); ROW512(3); ROW512(4);
    ROW512(5); ROW512(6); ROW512(7); ROW512(8); ROW512(9);
  }
  STORE512(0); STORE512(1); STORE512(2); STORE512(3); STORE512(4);
  STORE512(5); STORE512(6); STORE512(7); STORE512(8); STORE512(9);
}
#undef ROW512
#undef STORE512

/* micro_kernel_10x32 with A read in place: row i of the tile is a + i·lda, row-major
 * (k contiguous), so A needs no packing; the FMAs per output are the same, in the same
 * order. Rows past the matrix may repeat its last row (their outputs are dropped). */
#define ROW512R(i)                                                    \
  x = _mm512_set1_ps(r##i[kk]);                                       \
  c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                          \
  c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1)
#define STORE512(i)                                                   \
  _mm512_storeu_ps(c + i * ldc, c##i##0);                             \
  _mm512_storeu_ps(c + i * ldc + second, c##i##1)
__attribute__((target("avx512f,avx2,fma")))
static void micro_kernel_10x32_rows(int k, const float *const rows[MR512],
                                    const float *restrict b0p, const float *restrict b1p,
                                    float *restrict c, int64_t ldc, int64_t second) {
  const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4];
  const float *r5 = rows[5], *r6 = rows[6], *r7 = rows[7], *r8 = rows[8], *r9 = rows[9];
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps();
  __m512 c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk, b0p += NR, b1p += NR) {
    __m512 b0 = _mm512_load_ps(b0p);
    __m512 b1 = _mm512_load_ps(b1p);
    __m512 x;
    ROW512R(0); ROW512R(1); ROW512R(2); ROW512R(3); ROW512R(4);
    ROW512R(5); ROW512R(6); ROW512R(7); ROW512R(8); ROW512R(9);
  }
  STORE512(0); STORE512(1); STORE512(2); STORE512(3); STORE512(4);
  STORE512(5); STORE512(6); STORE512(7); STORE512(8); STORE512(9);
}
#undef ROW512R
#undef STORE512

/* gemm_packed (AVX-512 tiles) with A = a[m × k] row-major (rows lda apart), unpacked. */
static void gemm_rows(int m, int n, int k, const float *a, int64_t lda,
                      const float *b_packed, float *c, int64_t ldc, int64_t panel_stride) {
  float edge[MR512 * 2 * NR] __attribute__((aligned(64)));
  int n_panels = (n + NR - 1) / NR, m_panels = (m + MR512 - 1) / MR512;
  for (int q = 0; q < n_panels; q += 2) {
    const float *b = b_packed + (int64_t)q * NR * k;
    const float *b1 = q + 1 < n_panels ? b + NR * k : b;
    int cols2 = n - q * NR < 2 * NR ? n - q * NR : 2 * NR;
    for (int p = 0; p < m_panels; ++p) {
      int rows = m - p * MR512 < MR512 ? m - p * MR512 : MR512;
      const float *row[MR512];
      for (int i = 0; i < MR512; ++i)
        row[i] = a + (int64_t)(p * MR512 + (i < rows ? i : rows - 1)) * lda;
      float *out = c + (int64_t)p * MR512 * ldc + q * panel_stride;
      if (rows == MR512 && cols2 == 2 * NR) {
        micro_kernel_10x32_rows(k, row, b, b1, out, ldc, panel_stride);
      } else {
        int first = cols2 < NR ? cols2 : NR;
        micro_kernel_10x32_rows(k, row, b, b1, edge, 2 * NR, NR);
        for (int i = 0; i < rows; ++i) {
          memcpy(out + i * ldc, edge + i * 2 * NR, first * sizeof(float));
          if (cols2 > NR)
            memcpy(out + panel_stride + i * ldc, edge + i * 2 * NR + NR,
                   (cols2 - NR) * sizeof(float));
        }
      }
    }
  }
}

/* C = A·B; column panel q of C (NR columns) starts at c + q·panel_stride, its rows ldc
 * apart: row-major C is (ldc, NR); C written straight into the packed B operand of a
 * later product is (NR, NR·k'). */
static void gemm_packed(int m, int n, int k, const float *a_packed, const float *b_packed,
                        float *c, int64_t ldc, int64_t panel_stride) {
  float edge[MR512 * 2 * NR] __attribute__((aligned(64)));
  int n_panels = (n + NR - 1) / NR;
  if (use_avx512) { /* 10 × 32 tiles; an odd last panel goes through them twice */
    int m_panels = (m + MR512 - 1) / MR512;
    for (int q = 0; q < n_panels; q += 2) {
      const float *b = b_packed + (int64_t)q * NR * k;
      const float *b1 = q + 1 < n_panels ? b + NR * k : b;
      int cols2 = n - q * NR < 2 * NR ? n - q * NR : 2 * NR;
      for (int p = 0; p < m_panels; ++p) {
        const float *a = a_packed + (int64_t)p * MR512 * k;
        int rows = m - p * MR512 < MR512 ? m - p * MR512 : MR512;
        float *out = c + (int64_t)p * MR512 * ldc + q * panel_stride;
        if (rows == MR512 && cols2 == 2 * NR) {
          micro_kernel_10x32(k, a, b, b1, out, ldc, panel_stride);
        } else {
          int first = cols2 < NR ? cols2 : NR;
          micro_kernel_10x32(k, a, b, b1, edge, 2 * NR, NR);
          for (int i = 0; i < rows; ++i) {
            memcpy(out + i * ldc, edge + i * 2 * NR, first * sizeof(float));
            if (cols2 > NR)
              memcpy(out + panel_stride + i * ldc, edge + i * 2 * NR + NR,
                     (cols2 - NR) * sizeof(float));
          }
        }
      }
    }
    return;
  }
  int m_panels = (m + MR - 1) / MR;
  for (int q = 0; q < n_panels; ++q) {
    const float *b = b_packed + (int64_t)q * NR * k;
    int cols = n - q * NR < NR ? n - q * NR : NR;
    for (int p = 0; p < m_panels; ++p) {
      const float *a = a_packed + (int64_t)p * MR * k;
      int rows = m - p * MR < MR ? m - p * MR : MR;
      float *out = c + (int64_t)p * MR * ldc + q * panel_stride;
      if (rows == MR && cols == NR) {
        micro_kernel(k, a, b, out, ldc);
      } else {
        micro_kernel(k, a, b, edge, NR);
        for (int i = 0; i < rows; ++i)
          memcpy(out + i * ldc, edge + i * NR, cols * sizeof(float));
      }
    }
  }
}

/* The gradient product with the weight update as its epilogue: each tile of
 * G = A·B (rows: visible units, columns: this thread's hidden units) goes to a buffer
 * in L1 and is applied at once, ΔW ← m·ΔW + (G − decay·W), W ← W + ΔW, by the same
 * update_weights code as a separate pass would use, so the floats are the same; but
 * G never exists as a [D × hc] array (one 300 KB stream less per step). W and ΔW are
 * in the packed layout of the B operand of vW ([NR-column panel][row][NR], panels
 * NR·m apart), where a tile's rows of one panel are contiguous. */
static void gemm_packed_update(int m, int n, int k, const float *a_packed,
                               const float *b_packed, float *w, float *dw,
                               float momentum, float decay) {
  const int64_t panel_stride = (int64_t)NR * m;
  float tile[MR512 * 2 * NR] __attribute__((aligned(64)));
  int n_panels = (n + NR - 1) / NR;
  if (use_avx512) {
    int m_panels = (m + MR512 - 1) / MR512;
    for (int q = 0; q < n_panels; q += 2) {
      const float *b = b_packed + (int64_t)q * NR * k;
      const float *b1 = q + 1 < n_panels ? b + NR * k : b;
      int cols2 = n - q * NR < 2 * NR ? n - q * NR : 2 * NR;
      for (int p = 0; p < m_panels; ++p) {
        int rows = m - p * MR512 < MR512 ? m - p * MR512 : MR512;
        micro_kernel_10x32(k, a_packed + (int64_t)p * MR512 * k, b, b1, tile, 2 * NR, NR);
        for (int i = 0; i < rows; ++i) {
          int64_t at = q * panel_stride + (int64_t)(p * MR512 + i) * NR;
          const float *g = tile + i * 2 * NR;
          update_weights16(w + at, dw + at, g, cols2 < NR ? cols2 : NR, momentum, decay);
          if (cols2 > NR)
            update_weights16(w + at + panel_stride, dw + at + panel_stride, g + NR,
                             cols2 - NR, momentum, decay);
        }
      }
    }
    return;
  }
  int m_panels = (m + MR - 1) / MR;
  for (int q = 0; q < n_panels; ++q) {
    const float *b = b_packed + (int64_t)q * NR * k;
    int cols = n - q * NR < NR ? n - q * NR : NR;
    for (int p = 0; p < m_panels; ++p) {
      int rows = m - p * MR < MR ? m - p * MR : MR;
      micro_kernel(k, a_packed + (int64_t)p * MR * k, b, tile, NR);
      for (int i = 0; i < rows; ++i) {
        int64_t at = q * panel_stride + (int64_t)(p * MR + i) * NR;
        update_weights8(w + at, dw + at, tile + i * NR, cols, momentum, decay);
      }
    }
  }
}

/* ---------------------------------------------------------------------------------
 * A sense-reversing barrier that spins briefly, then yields (shared machines).
 * ------------------------------------------------------------------------------- */
typedef struct {
  atomic_int count;
  atomic_int generation;
  int parties;
} spin_barrier;

static void barrier_wait(spin_barrier *barrier) {
  int generation = atomic_load_explicit(&barrier->generation, memory_order_acquire);
  if (atomic_fetch_add_explicit(&barrier->count, 1, memory_order_acq_rel) ==
      barrier->parties - 1) {
    atomic_store_explicit(&barrier->count, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&barrier->generation, 1, memory_order_release);
    return;
  }
  int spins = 0;
  while (atomic_load_explicit(&barrier->generation, memory_order_acquire) == generation) {
    if (++spins < 4000) _mm_pause();
    else sched_yield();
  }
}

/* ---------------------------------------------------------------------------------
 * The epoch.
 * ------------------------------------------------------------------------------- */
typedef struct {
  /* inputs */
  const float *batches;
  int64_t num_batches;
  int batch, visible, hidden;
  uint64_t seed0;
  int64_t step_offset;
  float learning_rate, momentum, weight_cost;
  float sparsity_decay, sparsity_gain, sparsity_target;
  /* parameters and training state, updated in place */
  float *kernel, *hidden_bias, *visible_bias;
  float *kernel_increment, *hidden_bias_increment, *visible_bias_increment;
  float *running_activation;
  /* shared scratch */
  int num_threads, num_chunks;
  float *partials; /* [2][num_chunks][batch·visible] */
  spin_barrier barrier;
  atomic_int gate; /* 0: wait, 1: run, −1: a thread failed to start, return */
  /* results */
  double error_sum;
  double activation_sums[64];
  int failed[64];
} epoch_state;

typedef struct {
  epoch_state *state;
  int thread;
  int chunk_begin, chunk_end; /* this thread's chunks of hidden units */
} worker_args;

static float *aligned_floats(int64_t count) {
  void *p = NULL;
  size_t bytes = (size_t)((count + 16) * (int64_t)sizeof(float));
  bytes = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  memset(p, 0, bytes);
  return (float *)p;
}

#ifdef CD1_PROFILE
/* Cycle counts per phase of the step (build with -DCD1_PROFILE; printed to stderr). */
#include <stdio.h>
#include <x86intrin.h>
#define PROF_BEGIN uint64_t prof_t = __rdtsc(), prof_acc[16] = {0}
#define PROF(i) do { uint64_t prof_now = __rdtsc(); prof_acc[i] += prof_now - prof_t; \
                     prof_t = prof_now; } while (0)
#define PROF_END do { for (int i = 0; i < 16; ++i) if (prof_acc[i]) \
  fprintf(stderr, "thread %d phase %2d %7.1f kcycles/step\n", args->thread, i, \
          prof_acc[i] / 1e3 / (double)(s->num_batches ? s->num_batches : 1)); } while (0)
#else
#define PROF_BEGIN
#define PROF(i)
#define PROF_END
#endif

static void *run_worker(void *argument) {
  worker_args *args = (worker_args *)argument;
  epoch_state *s = args->state;
  int gate;
  while ((gate = atomic_load_explicit(&s->gate, memory_order_acquire)) == 0) sched_yield();
  if (gate < 0) return NULL;
  const int B = s->batch, D = s->visible, H = s->hidden;
  const int h0 = args->chunk_begin * CHUNK;
  const int h1 = args->chunk_end * CHUNK < H ? args->chunk_end * CHUNK : H;
  const int hc = h1 - h0; /* may be 0 for a thread with no chunk */
  const int ceil_b = B + MR512, ceil_d = D + MR512; /* rows of A panels, either height */
  const int ceil_hc = (hc + NR - 1) / NR * NR, ceil_dn = (D + NR - 1) / NR * NR;
  const int64_t slice = (int64_t)B * D;

  /* The thread's W and ΔW live packed for the whole epoch (W is the B operand of G1 and
     G3 as it is); they are unpacked into the caller's arrays at the end. */
  float *w_packed = aligned_floats((int64_t)ceil_hc * D);
  float *dw_packed = aligned_floats((int64_t)ceil_hc * D);
  float *a_packed = aligned_floats((int64_t)ceil_b * (D > CHUNK ? D : CHUNK));
  float *wt_packed = aligned_floats((int64_t)ceil_dn * CHUNK);     /* B of G2 */
  float *g_a_packed = aligned_floats((int64_t)ceil_d * 2 * B);     /* A of G4 */
  /* B of G4, [p⁺; p⁻] in NR-column panels: G1 and G3 write it, σ is applied in place. */
  float *g_b_packed = aligned_floats((int64_t)(ceil_hc ? ceil_hc : NR) * 2 * B);
  float *states = aligned_floats((int64_t)B * (hc ? hc : 1));
  float *negative_visible = aligned_floats(slice);
  float *uniform = aligned_floats((int64_t)(hc ? hc : 1) + 32);
  float *positive_sum = aligned_floats(hc ? hc : 1);
  float *negative_sum = aligned_floats(hc ? hc : 1);
  float *visible_bias = aligned_floats(D), *visible_increment = aligned_floats(D);
  float *visible_total = aligned_floats(D);
  int ok = w_packed && dw_packed && a_packed && wt_packed && g_a_packed && g_b_packed &&
           states && negative_visible && uniform &&
           positive_sum && negative_sum && visible_bias && visible_increment &&
           visible_total;
  s->failed[args->thread] = !ok;
  if (ok) {
    /* Every thread keeps its own copy of b and Δb and updates it identically, so no
       thread writes what another reads. */
    memcpy(visible_bias, s->visible_bias, D * sizeof(float));
    memcpy(visible_increment, s->visible_bias_increment, D * sizeof(float));
    if (hc > 0) {
      pack_b(w_packed, s->kernel + h0, D, hc, H);
      pack_b(dw_packed, s->kernel_increment + h0, D, hc, H);
    }
  }
  barrier_wait(&s->barrier);
  for (int t = 0; t < s->num_threads; ++t) ok = ok && !s->failed[t];

  PROF_BEGIN;
  const float lr = s->learning_rate, momentum = s->momentum;
  const float scale = lr / (float)B;
  double activation_sum = 0.0, error_sum = 0.0;
  float *positive = g_b_packed, *negative = g_b_packed + (int64_t)B * NR;

  for (int64_t step = 0; ok && step < s->num_batches; ++step) {
    const float *v = s->batches + step * slice;
    float *partials = s->partials + (step & 1) * (int64_t)s->num_chunks * slice;
    uint32_t key[2], counter[4];
    philox_key_counter(s->seed0, (uint64_t)(s->step_offset + step), key, counter);

    if (hc > 0) {
      /* G1: p⁺ = σ(vW + c) on this thread's units; h = 1[p⁺ > u]. */
      PROF(0);
      /* (AVX-512 reads the row-major A operands of G1–G3 in place; AVX2 packs them.) */
      if (use_avx512) {
        gemm_rows(B, hc, D, v, D, w_packed, positive, NR, NR * 2 * B);
      } else {
        pack_a(a_packed, D, 0, v, B, D, D, 1, 1.0f);
        PROF(1);
        gemm_packed(B, hc, D, a_packed, w_packed, positive, NR, NR * 2 * B);
      }
      PROF(2);
      if (use_avx512)
        logistic_rows16(positive, NR, NR * 2 * B, s->hidden_bias + h0, B, hc, positive_sum,
                        states, key, counter, H, h0, uniform);
      else
        logistic_rows(positive, NR, NR * 2 * B, s->hidden_bias + h0, B, hc, positive_sum,
                      states, key, counter, H, h0, uniform);
      PROF(3);
      /* G2, per chunk: the partial hWᵀ over the chunk's units. */
      for (int chunk = args->chunk_begin; chunk < args->chunk_end; ++chunk) {
        int c0 = chunk * CHUNK - h0;
        int c1 = (chunk + 1) * CHUNK < H ? (chunk + 1) * CHUNK - h0 : H - h0;
        int kc = c1 - c0;
        pack_transposed_w(wt_packed, w_packed, D, c0, kc);
        if (use_avx512) {
          PROF(4);
          gemm_rows(B, D, kc, states + c0, hc, wt_packed, partials + chunk * slice, D, NR);
        } else {
          pack_a(a_packed, kc, 0, states + c0, B, kc, hc, 1, 1.0f);
          PROF(4);
          gemm_packed(B, D, kc, a_packed, wt_packed, partials + chunk * slice, D, NR);
        }
        PROF(5);
      }
    }
    barrier_wait(&s->barrier);
    PROF(6);

    /* v⁻ = Σ_chunks (hWᵀ)_chunk + b, in chunk order (every thread, the same way). */
    memcpy(negative_visible, partials, slice * sizeof(float));
    for (int chunk = 1; chunk < s->num_chunks; ++chunk) {
      const float *part = partials + chunk * slice;
      for (int64_t i = 0; i < slice; ++i) negative_visible[i] += part[i];
    }
    for (int r = 0; r < B; ++r)
      for (int d = 0; d < D; ++d) negative_visible[(int64_t)r * D + d] += visible_bias[d];

    if (hc > 0) {
      /* G3: p⁻ = σ(v⁻W + c). */
      PROF(7);
      if (use_avx512) {
        gemm_rows(B, hc, D, negative_visible, D, w_packed, negative, NR, NR * 2 * B);
      } else {
        pack_a(a_packed, D, 0, negative_visible, B, D, D, 1, 1.0f);
        PROF(1);
        gemm_packed(B, hc, D, a_packed, w_packed, negative, NR, NR * 2 * B);
      }
      PROF(8);
      if (use_avx512)
        logistic_rows16(negative, NR, NR * 2 * B, s->hidden_bias + h0, B, hc, negative_sum,
                        NULL, NULL, NULL, 0, 0, NULL);
      else
        logistic_rows(negative, NR, NR * 2 * B, s->hidden_bias + h0, B, hc, negative_sum,
                      NULL, NULL, NULL, 0, 0, NULL);
      PROF(9);

      /* G4: lr·(vᵀp⁺ − v⁻ᵀp⁻)/B as one [D × 2B]·[2B × hc] product. */
      pack_a(g_a_packed, 2 * B, 0, v, D, B, 1, D, scale);
      pack_a(g_a_packed, 2 * B, B, negative_visible, D, B, 1, D, -scale);
      PROF(10);
      /* ΔW ← m·ΔW + (gradient − lr·µ·W); W ← W + ΔW (W read before its update), tile by
         tile as the gradient product yields them. */
      gemm_packed_update(D, hc, 2 * B, g_a_packed, g_b_packed, w_packed, dw_packed, momentum,
                         lr * s->weight_cost);
      PROF(11);
      /* q ← decay·q + (1 − decay)·mean p⁺; Δc ← m·Δc − gain·lr·(q − ρ) + lr·mean(p⁺ − p⁻). */
      for (int j = 0; j < hc; ++j) {
        int unit = h0 + j;
        float mean_positive = positive_sum[j] / (float)B;
        float q = s->sparsity_decay * s->running_activation[unit] +
                  (1.0f - s->sparsity_decay) * mean_positive;
        s->running_activation[unit] = q;
        float step_value = -s->sparsity_gain * lr * (q - s->sparsity_target) +
                           lr * ((positive_sum[j] - negative_sum[j]) / (float)B);
        float inc = momentum * s->hidden_bias_increment[unit] + step_value;
        s->hidden_bias_increment[unit] = inc;
        s->hidden_bias[unit] += inc;
        activation_sum += positive_sum[j];
      }
    }
    PROF(13);
    /* Δb ← m·Δb + lr·mean(v − v⁻); b ← b + Δb (private copy); reconstruction error. */
    double error = 0.0;
    /* Column sums of v − v⁻, row by row: each column adds its rows in row order, as a
       column-at-a-time loop would, but the inner loop runs across columns in vectors. */
    for (int d = 0; d < D; ++d) visible_total[d] = 0.0f;
    for (int r = 0; r < B; ++r) {
      const float *v_row = v + (int64_t)r * D, *n_row = negative_visible + (int64_t)r * D;
      for (int d = 0; d < D; ++d) visible_total[d] += v_row[d] - n_row[d];
    }
    for (int d = 0; d < D; ++d) {
      float total = visible_total[d];
      float inc = momentum * visible_increment[d] + lr * (total / (float)B);
      visible_increment[d] = inc;
      visible_bias[d] += inc;
    }
    if (args->thread == 0) {
      /* Σ (v − v⁻)² in double over eight interleaved partial sums (element i goes to
         sum i mod 8), added in order at the end: one fixed order for every thread
         count and ISA, without one long chain of dependent additions. */
      double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= slice; i += 8)
        for (int t = 0; t < 8; ++t) {
          double diff = (double)v[i + t] - (double)negative_visible[i + t];
          part[t] += diff * diff;
        }
      for (; i < slice; ++i) {
        double diff = (double)v[i] - (double)negative_visible[i];
        part[i % 8] += diff * diff;
      }
      for (int t = 0; t < 8; ++t) error += part[t];
      error_sum += error / (double)B;
    }
    PROF(14);
  }
  PROF_END;

  if (ok) /* this thread's units of W and ΔW back to the caller's row-major arrays */
    for (int d = 0; d < D; ++d)
      for (int j = 0; j < hc; j += NR) {
        int64_t at = (int64_t)(j / NR) * NR * D + (int64_t)d * NR;
        int cols = hc - j < NR ? hc - j : NR;
        memcpy(s->kernel + (int64_t)d * H + h0 + j, w_packed + at, cols * sizeof(float));
        memcpy(s->kernel_increment + (int64_t)d * H + h0 + j, dw_packed + at,
               cols * sizeof(float));
      }
  if (ok && args->thread == 0) {
    memcpy(s->visible_bias, visible_bias, D * sizeof(float));
    memcpy(s->visible_bias_increment, visible_increment, D * sizeof(float));
    s->error_sum = error_sum;
  }
  s->activation_sums[args->thread] = activation_sum;
  free(w_packed); free(dw_packed); free(a_packed); free(wt_packed); free(g_a_packed); free(g_b_packed);
  free(states); free(negative_visible);
  free(uniform); free(positive_sum); free(negative_sum);
  free(visible_bias); free(visible_increment); free(visible_total);
  return NULL;
}

/* Runs the epoch on `threads` threads (the caller's thread is one of them).
 * Returns 0, or −1 when memory ran out (the parameters are then unchanged or partly
 * updated; the caller reports the error). */
static int run_epoch(epoch_state *s, int threads) {
  int chunks = (s->hidden + CHUNK - 1) / CHUNK;
  if (threads > chunks) threads = chunks;
  if (threads > 64) threads = 64;
  if (threads < 1) threads = 1;
  s->num_threads = threads;
  s->num_chunks = chunks;
  s->partials = aligned_floats((int64_t)2 * chunks * s->batch * s->visible);
  if (!s->partials) return -1;
  atomic_init(&s->barrier.count, 0);
  atomic_init(&s->barrier.generation, 0);
  atomic_init(&s->gate, 0);
  s->barrier.parties = threads;
  s->error_sum = 0.0;
  worker_args args[64];
  pthread_t handles[64];
  for (int t = 0; t < threads; ++t) {
    args[t].state = s;
    args[t].thread = t;
    args[t].chunk_begin = (int)((int64_t)chunks * t / threads);
    args[t].chunk_end = (int)((int64_t)chunks * (t + 1) / threads);
    s->activation_sums[t] = 0.0;
    s->failed[t] = 0;
  }
  int started = 1;
  for (int t = 1; t < threads; ++t) {
    if (pthread_create(&handles[t], NULL, run_worker, &args[t]) != 0) break;
    ++started;
  }
  int result = 0;
  if (started < threads) {
    atomic_store_explicit(&s->gate, -1, memory_order_release);
    result = -1;
  } else {
    atomic_store_explicit(&s->gate, 1, memory_order_release);
    run_worker(&args[0]);
    for (int t = 0; t < threads; ++t)
      if (s->failed[t]) result = -1;
  }
  for (int t = 1; t < started; ++t) pthread_join(handles[t], NULL);
  free(s->partials);
  s->partials = NULL;
  return result;
}

#pragma GCC pop_options
#endif /* CD1_X86 */

/* ---------------------------------------------------------------------------------
 * Python bindings.
 * ------------------------------------------------------------------------------- */
static int cpu_supported(void) {
#ifdef CD1_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

static int avx512_supported(void) {
#ifdef CD1_X86
  __builtin_cpu_init();
  return cpu_supported() && __builtin_cpu_supports("avx512f");
#else
  return 0;
#endif
}

/* The code path of the next epochs: AVX-512 where the CPU has it, unless
 * DEEPBOF_CD1_ISA=avx2 asks for the AVX2 one (tests run both; results are equal).
 * Returns the name of the path, or NULL with a Python error for a bad request. */
static const char *select_isa(void) {
  const char *wanted = getenv("DEEPBOF_CD1_ISA");
  if (!cpu_supported()) {
    use_avx512 = 0;
    mr = MR;
    return "none";
  }
  if (wanted && *wanted && strcmp(wanted, "avx2") != 0 && strcmp(wanted, "avx512") != 0 &&
      strcmp(wanted, "auto") != 0) {
    PyErr_Format(PyExc_ValueError, "DEEPBOF_CD1_ISA must be auto, avx2 or avx512, got %s",
                 wanted);
    return NULL;
  }
  if (wanted && strcmp(wanted, "avx512") == 0 && !avx512_supported()) {
    PyErr_SetString(PyExc_RuntimeError, "DEEPBOF_CD1_ISA=avx512 but this CPU has no "
                    "AVX-512F");
    return NULL;
  }
  use_avx512 = avx512_supported() && !(wanted && strcmp(wanted, "avx2") == 0);
  mr = use_avx512 ? MR512 : MR;
  return use_avx512 ? "avx512" : "avx2";
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
  (void)self; (void)unused;
  const char *name = select_isa();
  return name ? PyUnicode_FromString(name) : NULL;
}

static PyObject *py_supported(PyObject *self, PyObject *unused) {
  (void)self; (void)unused;
  return PyBool_FromLong(cpu_supported());
}

static int check_buffer(Py_buffer *view, Py_ssize_t count, const char *name) {
  if (view->len != count * (Py_ssize_t)sizeof(float)) {
    PyErr_Format(PyExc_ValueError, "cd1 epoch: %s has %zd bytes, expected %zd float32",
                 name, view->len, count);
    return -1;
  }
  return 0;
}

static PyObject *py_uniform(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long seed0, seed1, start;
  Py_ssize_t count;
  Py_buffer out;
  if (!PyArg_ParseTuple(args, "KKKnw*", &seed0, &seed1, &start, &count, &out)) return NULL;
  if (out.len != count * (Py_ssize_t)sizeof(float)) {
    PyBuffer_Release(&out);
    PyErr_SetString(PyExc_ValueError, "uniform: output buffer size mismatch");
    return NULL;
  }
  uint32_t key[2], counter[4];
  philox_key_counter(seed0, seed1, key, counter);
  if (select_isa() == NULL) {
    PyBuffer_Release(&out);
    return NULL;
  }
#ifdef CD1_X86
  if (use_avx512)
    uniform_range16(key, counter, start, count, (float *)out.buf);
  else if (cpu_supported())
    uniform_range(key, counter, start, count, (float *)out.buf);
  else
#endif
    uniform_range_scalar(key, counter, start, count, (float *)out.buf);
  PyBuffer_Release(&out);
  Py_RETURN_NONE;
}

/* Test hook: out = σ(x) through the element-wise code of the epoch's path (isa()). */
static PyObject *py_logistic(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer in, out;
  if (!PyArg_ParseTuple(args, "y*w*", &in, &out)) return NULL;
  PyObject *result = NULL;
  Py_ssize_t count = in.len / (Py_ssize_t)sizeof(float);
  float *bias = NULL, *sums = NULL;
  if (in.len != out.len || in.len % (Py_ssize_t)sizeof(float) != 0 || count > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "logistic: input and output must be float32 of one size");
    goto done;
  }
  if (!cpu_supported()) {
    PyErr_SetString(PyExc_RuntimeError, "logistic: this CPU lacks AVX2/FMA");
    goto done;
  }
  if (select_isa() == NULL) goto done;
#ifdef CD1_X86
  bias = aligned_floats(count);
  sums = aligned_floats(count);
  if (!bias || !sums) {
    PyErr_NoMemory();
    goto done;
  }
  memcpy(out.buf, in.buf, (size_t)in.len);
  if (use_avx512)
    logistic_rows16((float *)out.buf, count, NR, bias, 1, (int)count, sums, NULL, NULL, NULL, 0, 0,
                    NULL);
  else
    logistic_rows((float *)out.buf, count, NR, bias, 1, (int)count, sums, NULL, NULL, NULL, 0, 0,
                  NULL);
  result = Py_None;
  Py_INCREF(result);
#endif
done:
  free(bias);
  free(sums);
  PyBuffer_Release(&in);
  PyBuffer_Release(&out);
  return result;
}

static PyObject *py_epoch(PyObject *self, PyObject *args, PyObject *kwargs) {
  (void)self;
  static char *keywords[] = {
      "batches", "kernel", "hidden_bias", "visible_bias", "kernel_increment",
      "hidden_bias_increment", "visible_bias_increment", "running_activation",
      "num_batches", "batch_size", "num_visible", "num_hidden", "seed", "step_offset",
      "learning_rate", "momentum", "weight_cost", "sparsity_decay", "sparsity_gain",
      "sparsity_target", "num_threads", NULL};
  Py_buffer views[8];
  Py_ssize_t num_batches, batch, visible, hidden, step_offset;
  unsigned long long seed;
  float lr, momentum, weight_cost, decay, gain, target;
  int threads;
  memset(views, 0, sizeof views);
  if (!PyArg_ParseTupleAndKeywords(
          args, kwargs, "y*w*w*w*w*w*w*w*nnnnKnffffffi", keywords, &views[0], &views[1],
          &views[2], &views[3], &views[4], &views[5], &views[6], &views[7], &num_batches,
          &batch, &visible, &hidden, &seed, &step_offset, &lr, &momentum, &weight_cost,
          &decay, &gain, &target, &threads))
    return NULL;
  PyObject *result = NULL;
  const char *names[8] = {"batches", "kernel", "hidden_bias", "visible_bias",
                          "kernel_increment", "hidden_bias_increment",
                          "visible_bias_increment", "running_activation"};
  Py_ssize_t counts[8] = {num_batches * batch * visible, visible * hidden, hidden, visible,
                          visible * hidden, hidden, visible, hidden};
  if (num_batches < 0 || batch <= 0 || visible <= 0 || hidden <= 0 ||
      batch > INT32_MAX / 4 || visible > INT32_MAX / 4 || hidden > INT32_MAX / 4) {
    PyErr_SetString(PyExc_ValueError, "cd1 epoch: invalid sizes");
    goto done;
  }
  for (int i = 0; i < 8; ++i)
    if (check_buffer(&views[i], counts[i], names[i]) != 0) goto done;
  if (!cpu_supported()) {
    PyErr_SetString(PyExc_RuntimeError,
                    "cd1 epoch: this CPU lacks AVX2/FMA; use the TensorFlow backend");
    goto done;
  }
  if (select_isa() == NULL) goto done;
#ifdef CD1_X86
  {
    epoch_state state;
    memset(&state, 0, sizeof state);
    state.batches = (const float *)views[0].buf;
    state.kernel = (float *)views[1].buf;
    state.hidden_bias = (float *)views[2].buf;
    state.visible_bias = (float *)views[3].buf;
    state.kernel_increment = (float *)views[4].buf;
    state.hidden_bias_increment = (float *)views[5].buf;
    state.visible_bias_increment = (float *)views[6].buf;
    state.running_activation = (float *)views[7].buf;
    state.num_batches = num_batches;
    state.batch = (int)batch;
    state.visible = (int)visible;
    state.hidden = (int)hidden;
    state.seed0 = seed;
    state.step_offset = step_offset;
    state.learning_rate = lr;
    state.momentum = momentum;
    state.weight_cost = weight_cost;
    state.sparsity_decay = decay;
    state.sparsity_gain = gain;
    state.sparsity_target = target;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_epoch(&state, threads);
    Py_END_ALLOW_THREADS
    if (status != 0) {
      PyErr_SetString(PyExc_MemoryError, "cd1 epoch: out of memory or threads");
      goto done;
    }
    double activation = 0.0;
    for (int t = 0; t < state.num_threads; ++t) activation += state.activation_sums[t];
    double steps = num_batches > 0 ? (double)num_batches : 1.0;
    result = Py_BuildValue("(dd)", state.error_sum / steps,
                           activation / (steps * (double)batch * (double)hidden));
  }
#endif
done:
  for (int i = 0; i < 8; ++i)
    if (views[i].obj) PyBuffer_Release(&views[i]);
  return result;
}

static PyMethodDef methods[] = {
    {"supported", py_supported, METH_NOARGS,
     "True if this CPU can run the native kernel (x86-64 with AVX2 and FMA)."},
    {"isa", py_isa, METH_NOARGS,
     "The code path epochs use now: 'avx512', 'avx2' (DEEPBOF_CD1_ISA=avx2 forces it) "
     "or 'none'."},
    {"uniform", py_uniform, METH_VARARGS,
     "uniform(seed0, seed1, start, count, out): elements [start, start+count) of "
     "tf.random.stateless_uniform's float32 stream for seed (seed0, seed1), by the "
     "Philox code of the path isa() names."},
    {"logistic", py_logistic, METH_VARARGS,
     "logistic(x, out): out = 1 / (1 + exp(-x)) for float32 buffers, through the "
     "epoch's element-wise code on the path isa() names (a test hook)."},
    {"epoch", (PyCFunction)(void (*)(void))py_epoch, METH_VARARGS | METH_KEYWORDS,
     "One CD-1 epoch over [num_batches, B, D] float32 minibatches, in place."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cd1",
                                    "Native CPU CD-1 epoch of the sparse RBM.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cd1(void) { return PyModule_Create(&module); }
