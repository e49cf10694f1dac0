/* Packed GEMM of the CD-1 epoch (cd1_gemm.c): packing, the tile kernels of the two
 * paths and the products built on them. Which tiles run follows cd1_use_avx512;
 * A panels are cd1_mr rows high, B panels NR columns wide.
 */
#ifndef DEEPBOF_NATIVE_CD1_GEMM_H_
#define DEEPBOF_NATIVE_CD1_GEMM_H_

#include <stdint.h>

/* A (m × k, element (i, kk) at src[i·row_stride + kk·col_stride]) times scale, into
 * columns [k_offset, k_offset + k) of the cd1_mr-row panels of a k_total-wide A. */
void pack_a(float *dst, int k_total, int k_offset, const float *src, int m, int k,
            int64_t row_stride, int64_t col_stride, float scale);

/* B[k × n] (rows row_stride apart, contiguous within a row) into NR-column panels. */
void pack_b(float *dst, const float *src, int k, int n, int64_t row_stride);

/* The B operand of hWᵀ for local units [c0, c0 + kc), from the packed W. */
void pack_transposed_w(float *dst, const float *w_packed, int num_visible, int c0, int kc);

/* C = A·B, A packed; column panel q of C starts at c + q·panel_stride, rows ldc apart. */
void gemm_packed(int m, int n, int k, const float *a_packed, const float *b_packed,
                 float *c, int64_t ldc, int64_t panel_stride);

/* gemm_packed on the AVX-512 tiles with A row-major (rows lda apart), not packed. */
void gemm_rows(int m, int n, int k, const float *a, int64_t lda, const float *b_packed,
               float *c, int64_t ldc, int64_t panel_stride);

/* G = A·B applied tile by tile as ΔW ← m·ΔW + (G − decay·W); W ← W + ΔW, with W and ΔW
 * packed as the B operand of vW. */
void gemm_packed_update(int m, int n, int k, const float *a_packed, const float *b_packed,
                        float *w, float *dw, float momentum, float decay);

#endif /* DEEPBOF_NATIVE_CD1_GEMM_H_ */
