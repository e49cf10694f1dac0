/* One vector width for the element-wise code of the CD-1 kernel.
 *
 * The element-wise functions (the vector Philox in cd1_random_simd.h, σ and the weight
 * update in cd1_math_simd.h) are written once against the names defined here; they are
 * compiled twice, by cd1_avx2.c with CD1_WIDTH 8 (AVX2/FMA, 256-bit registers) and by
 * cd1_avx512.c with CD1_WIDTH 16 (AVX-512F, 512-bit registers). Every name maps to one
 * instruction on either width, so both builds perform the same operations in the same
 * order on every lane and give the same floats (the tests compare the two paths bit
 * for bit). What differs between the widths is only here: the intrinsic names, how a
 * partial vector is masked, and the shuffle that puts Philox output in stream order.
 *
 * V(name) is name_avx2 or name_avx512: the instantiations' external names.
 */
#ifndef DEEPBOF_NATIVE_CD1_SIMD_H_
#define DEEPBOF_NATIVE_CD1_SIMD_H_

#include <immintrin.h>
#include <stdint.h>

#define CD1_PASTE_(a, b) a##_##b
#define CD1_PASTE(a, b) CD1_PASTE_(a, b)
#define V(name) CD1_PASTE(name, CD1_ISA)

#if CD1_WIDTH == 8
#define CD1_ISA avx2
typedef __m256 vf;   /* 8 floats */
typedef __m256i vi;  /* 8 uint32 */
typedef __m256i vmask;
#define vf_set1 _mm256_set1_ps
#define vf_zero _mm256_setzero_ps
#define vf_loadu _mm256_loadu_ps
#define vf_storeu _mm256_storeu_ps
#define vf_add _mm256_add_ps
#define vf_sub _mm256_sub_ps
#define vf_mul _mm256_mul_ps
#define vf_div _mm256_div_ps
#define vf_min _mm256_min_ps
#define vf_max _mm256_max_ps
#define vf_fmadd _mm256_fmadd_ps
#define vf_fnmadd _mm256_fnmadd_ps
#define vf_round_nearest(x) \
  _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_to_i32 _mm256_cvtps_epi32
#define vf_from_bits _mm256_castsi256_ps
/* 1.0f where a > b (ordered), else 0.0f. */
#define vf_gt_as_one(a, b) \
  _mm256_and_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), _mm256_set1_ps(1.0f))
#define vi_set1 _mm256_set1_epi32
#define vi_lane_index() _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define vi_add _mm256_add_epi32
#define vi_and _mm256_and_si256
#define vi_or _mm256_or_si256
#define vi_slli32 _mm256_slli_epi32
#define vi_srli64 _mm256_srli_epi64
#define vi_slli64 _mm256_slli_epi64
#define vi_mul_epu32 _mm256_mul_epu32
/* Even 32-bit lanes from a, odd ones from b. */
#define vi_blend_odd(a, b) _mm256_blend_epi32(a, b, 0xAA)
#define vi_xor3(a, b, c) _mm256_xor_si256(_mm256_xor_si256(a, b), c)
/* The first n lanes (all of them for n ≥ 8); masked-off lanes load as 0. */
#define vmask_first(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), vi_lane_index())
#define vf_maskz_loadu(m, p) _mm256_maskload_ps(p, m)
#define vf_mask_storeu(p, m, v) _mm256_maskstore_ps(p, m, v)

/* Philox output (word w of block b in lane b of f_w) to the stream order [block][word]:
 * 32 floats. */
static inline void store_stream_order_avx2(vf f0, vf f1, vf f2, vf f3, float *out) {
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

#elif CD1_WIDTH == 16
#define CD1_ISA avx512
typedef __m512 vf;   /* 16 floats */
typedef __m512i vi;  /* 16 uint32 */
typedef __mmask16 vmask;
#define vf_set1 _mm512_set1_ps
#define vf_zero _mm512_setzero_ps
#define vf_loadu _mm512_loadu_ps
#define vf_storeu _mm512_storeu_ps
#define vf_add _mm512_add_ps
#define vf_sub _mm512_sub_ps
#define vf_mul _mm512_mul_ps
#define vf_div _mm512_div_ps
#define vf_min _mm512_min_ps
#define vf_max _mm512_max_ps
#define vf_fmadd _mm512_fmadd_ps
#define vf_fnmadd _mm512_fnmadd_ps
#define vf_round_nearest(x) \
  _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_to_i32 _mm512_cvtps_epi32
#define vf_from_bits _mm512_castsi512_ps
#define vf_gt_as_one(a, b) \
  _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), _mm512_set1_ps(1.0f))
#define vi_set1 _mm512_set1_epi32
#define vi_lane_index() \
  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define vi_add _mm512_add_epi32
#define vi_and _mm512_and_si512
#define vi_or _mm512_or_si512
#define vi_slli32 _mm512_slli_epi32
#define vi_srli64 _mm512_srli_epi64
#define vi_slli64 _mm512_slli_epi64
#define vi_mul_epu32 _mm512_mul_epu32
#define vi_blend_odd(a, b) _mm512_mask_blend_epi32(0xAAAA, a, b)
/* a ^ b ^ c as one three-input logic op (0x96: odd parity). */
#define vi_xor3(a, b, c) _mm512_ternarylogic_epi32(a, b, c, 0x96)
#define vmask_first(n) \
  ((n) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n)) - 1u))
#define vf_maskz_loadu(m, p) _mm512_maskz_loadu_ps(m, p)
#define vf_mask_storeu(p, m, v) _mm512_mask_storeu_ps(p, m, v)

/* As store_stream_order_avx2 within each 128-bit lane, which leaves block b in lane
 * b / 4 of s(b % 4); then a 4 × 4 transpose of the lanes: 64 floats. */
static inline void store_stream_order_avx512(vf f0, vf f1, vf f2, vf f3, float *out) {
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

#else
#error "cd1_simd.h: define CD1_WIDTH as 8 (AVX2) or 16 (AVX-512) before including it"
#endif

/* The first `lanes` floats at p (lanes ≤ CD1_WIDTH; the rest of the vector is 0). A
 * whole vector is a plain load, a partial one a masked load that touches no memory
 * past p + lanes. */
static inline vf V(load_first)(const float *p, int lanes) {
  return lanes == CD1_WIDTH ? vf_loadu(p) : vf_maskz_loadu(vmask_first(lanes), p);
}

/* Stores the first `lanes` floats of v at p. */
static inline void V(store_first)(float *p, vf v, int lanes) {
  if (lanes == CD1_WIDTH) vf_storeu(p, v);
  else vf_mask_storeu(p, vmask_first(lanes), v);
}

#endif /* DEEPBOF_NATIVE_CD1_SIMD_H_ */
