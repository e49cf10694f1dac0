/* The threads of one CD-1 epoch (cd1_threads.c): a spinning barrier, and a start gate
 * that runs a worker on a fixed number of threads, the caller's among them. */
#ifndef DEEPBOF_NATIVE_CD1_THREADS_H_
#define DEEPBOF_NATIVE_CD1_THREADS_H_

#include <stddef.h>
#include <stdatomic.h>

/* A sense-reversing barrier for `parties` threads that spins briefly, then yields
 * (shared machines). */
typedef struct {
  atomic_int count;
  atomic_int generation;
  int parties;
} spin_barrier;

void barrier_init(spin_barrier *barrier, int parties);
void barrier_wait(spin_barrier *barrier);

/* Runs worker(args + t·arg_size) for t < threads: t = 0 on the calling thread, the others
 * on new threads. Every worker must first call gate_wait(gate) and return at once when
 * it gives −1: the gate opens (1) once all threads have started, or turns −1 when one
 * could not be started, so no worker waits at a barrier for a thread that never came.
 * Returns 0 when all ran, −1 when not all threads could be started (then none ran). */
int run_on_threads(void *(*worker)(void *), void *args, size_t arg_size, int threads,
                   atomic_int *gate);

/* Waits until the gate of run_on_threads opens (1) or fails (−1); returns which. */
int gate_wait(atomic_int *gate);

#endif /* DEEPBOF_NATIVE_CD1_THREADS_H_ */
