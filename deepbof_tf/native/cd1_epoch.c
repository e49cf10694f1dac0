/* One CD-1 epoch of the Gaussian–binary sparse RBM: the driver of the kernel
 * deepbof_tf.native._cd1 (why a kernel of our own and how it is laid out: README.md
 * here and docs/native-kernel.md).
 *
 * CD-1 at the paper's sizes (B = 100, D ≈ 150, H = 1024) is a serial chain of five small
 * products per minibatch. Here every thread owns a fixed range of hidden units for the
 * whole epoch: its slice of W, ΔW, c, Δc and q stays in its own core's cache, four of
 * the five products need no communication, and the fifth (v⁻ = hWᵀ + b, a sum over
 * hidden units) needs one small reduction and one barrier per step.
 *
 * The update is the one of SparseRBMTrainer.step in sparse_rbm.py (same order, same
 * formulas). The sampling draws are bit-identical to the TF path's
 * tf.random.stateless_uniform([B, H], seed=(seed0, seed1)) (cd1_random.c). The partial
 * sums of hWᵀ are formed over fixed 128-unit chunks and added in chunk order, so the
 * result does not depend on the number of threads.
 *
 * Each thread keeps its W and ΔW packed (16-column panels) for the whole epoch; p⁺ and
 * p⁻ are written straight into the packed operand of the gradient product, and the
 * weight update is that product's epilogue, tile by tile (cd1_gemm.c).
 *
 * This file is compiled for AVX2/FMA, as the driver always was: the compiler may fuse its
 * scalar a·b + c into FMAs, and keeping its flags keeps its results those of earlier
 * builds. Both paths run this same code, so it rounds the same way on either.
 */
#include <stdlib.h>
#include <string.h>

#include "cd1_common.h"
#include "cd1_epoch.h"
#include "cd1_gemm.h"
#include "cd1_math.h"
#include "cd1_random.h"
#include "cd1_threads.h"

float *aligned_floats(int64_t count) {
  void *p = NULL;
  size_t bytes = (size_t)((count + 16) * (int64_t)sizeof(float));
  bytes = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  memset(p, 0, bytes);
  return (float *)p;
}

#ifdef CD1_X86
#pragma GCC target("avx2,fma")

typedef struct {
  epoch_state *state;
  int thread;
  int chunk_begin, chunk_end; /* this thread's chunks of hidden units */
} worker_args;

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
  if (gate_wait(&s->gate) < 0) return NULL;
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
      if (cd1_use_avx512) {
        gemm_rows(B, hc, D, v, D, w_packed, positive, NR, NR * 2 * B);
      } else {
        pack_a(a_packed, D, 0, v, B, D, D, 1, 1.0f);
        PROF(1);
        gemm_packed(B, hc, D, a_packed, w_packed, positive, NR, NR * 2 * B);
      }
      PROF(2);
      logistic_rows(positive, NR, NR * 2 * B, s->hidden_bias + h0, B, hc, positive_sum,
                    states, key, counter, H, h0, uniform);
      PROF(3);
      /* G2, per chunk: the partial hWᵀ over the chunk's units. */
      for (int chunk = args->chunk_begin; chunk < args->chunk_end; ++chunk) {
        int c0 = chunk * CHUNK - h0;
        int c1 = (chunk + 1) * CHUNK < H ? (chunk + 1) * CHUNK - h0 : H - h0;
        int kc = c1 - c0;
        pack_transposed_w(wt_packed, w_packed, D, c0, kc);
        if (cd1_use_avx512) {
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
      if (cd1_use_avx512) {
        gemm_rows(B, hc, D, negative_visible, D, w_packed, negative, NR, NR * 2 * B);
      } else {
        pack_a(a_packed, D, 0, negative_visible, B, D, D, 1, 1.0f);
        PROF(1);
        gemm_packed(B, hc, D, a_packed, w_packed, negative, NR, NR * 2 * B);
      }
      PROF(8);
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
int run_epoch(epoch_state *s, int threads) {
  int chunks = (s->hidden + CHUNK - 1) / CHUNK;
  if (threads > chunks) threads = chunks;
  if (threads > CD1_MAX_THREADS) threads = CD1_MAX_THREADS;
  if (threads < 1) threads = 1;
  s->num_threads = threads;
  s->num_chunks = chunks;
  s->partials = aligned_floats((int64_t)2 * chunks * s->batch * s->visible);
  if (!s->partials) return -1;
  barrier_init(&s->barrier, threads);
  s->error_sum = 0.0;
  worker_args args[CD1_MAX_THREADS];
  for (int t = 0; t < threads; ++t) {
    args[t].state = s;
    args[t].thread = t;
    args[t].chunk_begin = (int)((int64_t)chunks * t / threads);
    args[t].chunk_end = (int)((int64_t)chunks * (t + 1) / threads);
    s->activation_sums[t] = 0.0;
    s->failed[t] = 0;
  }
  int result = run_on_threads(run_worker, args, sizeof args[0], threads, &s->gate);
  for (int t = 0; result == 0 && t < threads; ++t)
    if (s->failed[t]) result = -1;
  free(s->partials);
  s->partials = NULL;
  return result;
}

#endif /* CD1_X86 */
