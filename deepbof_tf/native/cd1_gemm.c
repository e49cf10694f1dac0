/* Packed GEMM for the CD-1 epoch: C[M×N] = A[M×K]·B[K×N] with A packed in panels of
 * cd1_mr rows ([panel][k][cd1_mr]) and B in panels of NR columns ([panel][k][NR]),
 * zero-padded; the tile kernels of both paths (6×16 on AVX2, 10×32 on AVX-512, reading
 * A packed or in place); and the gradient product with the weight update as its
 * epilogue. The two paths' kernels compute each output with the same fused
 * multiply-adds in the same order (one per k, in k order), so they give bit-identical
 * results. The functions are declared in cd1_gemm.h.
 */
#include <stdint.h>
#include <string.h>

#include "cd1_common.h"
#include "cd1_gemm.h"
#include "cd1_math.h"

#ifdef CD1_X86
#pragma GCC target("avx2,fma")
#include <immintrin.h>

/* The AVX-512 tile kernels. AVX-512F only: the run-time check asks for nothing more. */
#define TARGET512 __attribute__((target("avx512f,avx2,fma")))

/* Rows [0, m) × columns [0, k) of src (element (i, kk) at src[i·row_stride +
 * kk·col_stride]), times scale, into the A panels of dst at columns k_offset … of
 * k_total. */
void pack_a(float *dst, int k_total, int k_offset, const float *src, int m,
            int k, int64_t row_stride, int64_t col_stride, float scale) {
  int panels = (m + cd1_mr - 1) / cd1_mr;
  if (row_stride == 1) { /* the rows of a panel are adjacent in src: copy them as runs */
    for (int p = 0; p < panels; ++p) {
      float *panel = dst + (int64_t)p * cd1_mr * k_total + (int64_t)k_offset * cd1_mr;
      int rows = m - p * cd1_mr < cd1_mr ? m - p * cd1_mr : cd1_mr;
      for (int kk = 0; kk < k; ++kk) {
        const float *s = src + (int64_t)kk * col_stride + p * cd1_mr;
        float *out = panel + (int64_t)kk * cd1_mr;
        for (int i = 0; i < rows; ++i) out[i] = scale * s[i];
        for (int i = rows; i < cd1_mr; ++i) out[i] = 0.0f;
      }
    }
    return;
  }
  for (int p = 0; p < panels; ++p) {
    float *panel = dst + (int64_t)p * cd1_mr * k_total + (int64_t)k_offset * cd1_mr;
    for (int i = 0; i < cd1_mr; ++i) {
      int row = p * cd1_mr + i;
      if (row < m) {
        const float *s = src + row * row_stride;
        for (int kk = 0; kk < k; ++kk) panel[kk * cd1_mr + i] = scale * s[kk * col_stride];
      } else {
        for (int kk = 0; kk < k; ++kk) panel[kk * cd1_mr + i] = 0.0f;
      }
    }
  }
}

/* B[k × n], rows `row_stride` apart and contiguous within a row, packed into NR-column
 * panels ([panel][k][NR], zero-padded); the transposed case is pack_transposed_w. */
void pack_b(float *dst, const float *src, int k, int n, int64_t row_stride) {
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
void pack_transposed_w(float *dst, const float *w_packed, int num_visible, int c0,
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
TARGET512
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
TARGET512
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
void gemm_rows(int m, int n, int k, const float *a, int64_t lda,
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
void gemm_packed(int m, int n, int k, const float *a_packed, const float *b_packed,
                 float *c, int64_t ldc, int64_t panel_stride) {
  float edge[MR512 * 2 * NR] __attribute__((aligned(64)));
  int n_panels = (n + NR - 1) / NR;
  if (cd1_use_avx512) { /* 10 × 32 tiles; an odd last panel goes through them twice */
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
void gemm_packed_update(int m, int n, int k, const float *a_packed,
                        const float *b_packed, float *w, float *dw,
                        float momentum, float decay) {
  const int64_t panel_stride = (int64_t)NR * m;
  float tile[MR512 * 2 * NR] __attribute__((aligned(64)));
  int n_panels = (n + NR - 1) / NR;
  if (cd1_use_avx512) {
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
          update_weights_avx512(w + at, dw + at, g, cols2 < NR ? cols2 : NR, momentum, decay);
          if (cols2 > NR)
            update_weights_avx512(w + at + panel_stride, dw + at + panel_stride, g + NR,
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
        update_weights_avx2(w + at, dw + at, tile + i * NR, cols, momentum, decay);
      }
    }
  }
}

#endif /* CD1_X86 */
