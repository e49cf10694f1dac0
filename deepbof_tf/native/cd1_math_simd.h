/* The element-wise steps of the epoch on one vector width: σ with the sampling of the
 * hidden states, and the weight update. A template: included once per vector width by
 * cd1_avx2.c and cd1_avx512.c, after cd1_simd.h (which see); the declarations of both
 * instantiations are in cd1_math.h. */
#include "cd1_common.h"
#include "cd1_math.h"
#include "cd1_random.h"
#include "cd1_simd.h"

/* The logistic function: σ(x) = 1 / (1 + e^−x) with e^−x = 2^n · p(r) (range reduction
 * by ln 2, a degree-6 polynomial on [−ln2/2, ln2/2]; about 1 ulp), and 1 + 2^n · p as
 * one fused multiply-add. Every rounding step is an explicit intrinsic (no a·b + c left
 * for the compiler to fuse or not), so both widths give the same floats. */
static inline vf V(sigmoid)(vf x) {
  const vf one = vf_set1(1.0f);
  x = vf_sub(vf_zero(), x);
  x = vf_min(vf_max(x, vf_set1(-87.3f)), vf_set1(88.3f));
  vf n = vf_round_nearest(vf_mul(x, vf_set1(1.44269504088896341f)));
  /* r = x − n·ln2 with ln2 split into an exactly representable head and a tail. */
  vf r = vf_fnmadd(n, vf_set1(0.693359375f), x);
  r = vf_fnmadd(n, vf_set1(-2.12194440e-4f), r);
  vf p = vf_set1(1.9875691500e-4f);
  p = vf_fmadd(p, r, vf_set1(1.3981999507e-3f));
  p = vf_fmadd(p, r, vf_set1(8.3334519073e-3f));
  p = vf_fmadd(p, r, vf_set1(4.1665795894e-2f));
  p = vf_fmadd(p, r, vf_set1(1.6666665459e-1f));
  p = vf_fmadd(p, r, vf_set1(5.0000001201e-1f));
  p = vf_fmadd(p, vf_mul(r, r), vf_add(r, one));
  vi e = vi_slli32(vi_add(vf_to_i32(n), vi_set1(127)), 23);
  return vf_div(one, vf_fmadd(p, vf_from_bits(e), one));
}

void V(logistic_rows)(float *p, int64_t row_stride, int64_t panel_stride,
                      const float *bias, int rows, int cols, float *sums, float *states,
                      const uint32_t *key, const uint32_t *counter, int64_t stream_row,
                      int64_t stream_offset, float *uniform) {
  for (int j = 0; j < cols; ++j) sums[j] = 0.0f;
  for (int r = 0; r < rows; ++r) {
    float *row = p + (int64_t)r * row_stride;
    float *state_row = states ? states + (int64_t)r * cols : NULL;
    if (states)
      V(uniform_range)(key, counter, (uint64_t)(r * stream_row + stream_offset), cols,
                       uniform);
    /* A vector never crosses a panel (CD1_WIDTH divides NR); the tail goes through the
       same code with the lanes past `cols` masked off. */
    for (int j = 0; j < cols; j += CD1_WIDTH) {
      int lanes = cols - j < CD1_WIDTH ? cols - j : CD1_WIDTH;
      float *at = row + (j / NR) * panel_stride + j % NR;
      vf prob = V(sigmoid)(vf_add(V(load_first)(at, lanes), V(load_first)(bias + j, lanes)));
      V(store_first)(at, prob, lanes);
      V(store_first)(sums + j, vf_add(V(load_first)(sums + j, lanes), prob), lanes);
      if (states)
        V(store_first)(state_row + j, vf_gt_as_one(prob, V(load_first)(uniform + j, lanes)),
                       lanes);
    }
  }
}

void V(update_weights)(float *w, float *dw, const float *g, int n, float momentum,
                       float decay) {
  const vf m = vf_set1(momentum), decay_v = vf_set1(decay);
  for (int j = 0; j < n; j += CD1_WIDTH) {
    vmask mask = vmask_first(n - j);
    vf wj = vf_maskz_loadu(mask, w + j);
    vf step_value = vf_fnmadd(decay_v, wj, vf_maskz_loadu(mask, g + j));
    vf inc = vf_fmadd(m, vf_maskz_loadu(mask, dw + j), step_value);
    vf_mask_storeu(dw + j, mask, inc);
    vf_mask_storeu(w + j, mask, vf_add(wj, inc));
  }
}
