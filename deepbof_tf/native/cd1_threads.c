/* The threads of one CD-1 epoch: a spinning barrier and the start gate (cd1_threads.h). */
#include <pthread.h>
#include <sched.h>

#include "cd1_common.h"
#include "cd1_threads.h"

#ifdef CD1_X86
#include <immintrin.h>
#define CD1_PAUSE() _mm_pause()
#else
#define CD1_PAUSE() ((void)0)
#endif

void barrier_init(spin_barrier *barrier, int parties) {
  atomic_init(&barrier->count, 0);
  atomic_init(&barrier->generation, 0);
  barrier->parties = parties;
}

void barrier_wait(spin_barrier *barrier) {
  int generation = atomic_load_explicit(&barrier->generation, memory_order_acquire);
  if (atomic_fetch_add_explicit(&barrier->count, 1, memory_order_acq_rel) ==
      barrier->parties - 1) {
    atomic_store_explicit(&barrier->count, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&barrier->generation, 1, memory_order_release);
    return;
  }
  int spins = 0;
  while (atomic_load_explicit(&barrier->generation, memory_order_acquire) == generation) {
    if (++spins < 4000) CD1_PAUSE();
    else sched_yield();
  }
}

int gate_wait(atomic_int *gate) {
  int value;
  while ((value = atomic_load_explicit(gate, memory_order_acquire)) == 0) sched_yield();
  return value;
}

int run_on_threads(void *(*worker)(void *), void *args, size_t arg_size, int threads,
                   atomic_int *gate) {
  pthread_t handles[CD1_MAX_THREADS];
  if (threads > CD1_MAX_THREADS) return -1;
  atomic_init(gate, 0);
  int started = 1;
  for (int t = 1; t < threads; ++t) {
    if (pthread_create(&handles[t], NULL, worker, (char *)args + (size_t)t * arg_size) != 0)
      break;
    ++started;
  }
  int result = 0;
  if (started < threads) {
    atomic_store_explicit(gate, -1, memory_order_release);
    result = -1;
  } else {
    atomic_store_explicit(gate, 1, memory_order_release);
    worker(args);
  }
  for (int t = 1; t < started; ++t) pthread_join(handles[t], NULL);
  return result;
}
