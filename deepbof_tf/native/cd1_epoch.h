/* One CD-1 epoch of the Gaussian–binary sparse RBM on x86-64 CPUs (cd1_epoch.c). */
#ifndef DEEPBOF_NATIVE_CD1_EPOCH_H_
#define DEEPBOF_NATIVE_CD1_EPOCH_H_

#include <stdatomic.h>
#include <stdint.h>

#include "cd1_common.h"
#include "cd1_threads.h"

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
  double activation_sums[CD1_MAX_THREADS];
  int failed[CD1_MAX_THREADS];
} epoch_state;

/* Runs the epoch on `threads` threads (the caller's thread is one of them) on the path
 * cd1_select_isa() chose. Returns 0, or −1 when memory ran out (the parameters are then
 * unchanged or partly updated; the caller reports the error). */
int run_epoch(epoch_state *s, int threads);

#endif /* DEEPBOF_NATIVE_CD1_EPOCH_H_ */
