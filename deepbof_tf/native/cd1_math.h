/* The element-wise steps of the CD-1 epoch: σ (with the sampling of the hidden states)
 * and the weight update, each written once (cd1_math_simd.h) and compiled for AVX2
 * (cd1_avx2.c) and AVX-512 (cd1_avx512.c). The two give bit-identical results; the
 * inline functions below call the one of the path cd1_select_isa() chose.
 */
#ifndef DEEPBOF_NATIVE_CD1_MATH_H_
#define DEEPBOF_NATIVE_CD1_MATH_H_

#include <stdint.h>

#include "cd1_common.h"
#include "cd1_random.h"

/* p[r][j] ← σ(p[r][j] + bias[j]) for r < rows, j < cols, and sums[j] = Σ_r p[r][j];
 * p[r][j] is p[r·row_stride + (j / NR)·panel_stride + j % NR] (row-major: cols, NR; the
 * packed B operand of a product: NR, NR·k).
 * With states: states[r][j] = 1[p[r][j] > u], u the element r·stream_row + stream_offset
 * + j of the step's uniform stream (scratch: `uniform`, cols + 32 floats). */
void logistic_rows_avx2(float *p, int64_t row_stride, int64_t panel_stride,
                        const float *bias, int rows, int cols, float *sums, float *states,
                        const uint32_t *key, const uint32_t *counter, int64_t stream_row,
                        int64_t stream_offset, float *uniform);
void logistic_rows_avx512(float *p, int64_t row_stride, int64_t panel_stride,
                          const float *bias, int rows, int cols, float *sums,
                          float *states, const uint32_t *key, const uint32_t *counter,
                          int64_t stream_row, int64_t stream_offset, float *uniform);

/* ΔW ← m·ΔW + (g − decay·W); W ← W + ΔW over n contiguous units, with a masked tail (so
 * every unit goes through the same fused operations). The callers pass a panel row of
 * the packed W and ΔW (see gemm_packed_update). */
void update_weights_avx2(float *w, float *dw, const float *g, int n, float momentum,
                         float decay);
void update_weights_avx512(float *w, float *dw, const float *g, int n, float momentum,
                           float decay);

#ifdef CD1_X86
static inline void logistic_rows(float *p, int64_t row_stride, int64_t panel_stride,
                                 const float *bias, int rows, int cols, float *sums,
                                 float *states, const uint32_t *key, const uint32_t *counter,
                                 int64_t stream_row, int64_t stream_offset, float *uniform) {
  (cd1_use_avx512 ? logistic_rows_avx512 : logistic_rows_avx2)(
      p, row_stride, panel_stride, bias, rows, cols, sums, states, key, counter, stream_row,
      stream_offset, uniform);
}
#endif

#endif /* DEEPBOF_NATIVE_CD1_MATH_H_ */
