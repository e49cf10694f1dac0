/* Shared definitions of the CD-1 kernel's sources (the extension deepbof_tf.native._cd1;
 * the parts and how they fit: README.md here).
 *
 * Everything the parts share is declared here or in their own headers; none of it is
 * exported from the shared object (it is built with -fvisibility=hidden, see build.py):
 * the only public symbol is PyInit__cd1.
 */
#ifndef DEEPBOF_NATIVE_CD1_COMMON_H_
#define DEEPBOF_NATIVE_CD1_COMMON_H_

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CD1_X86 1
#endif

/* Hidden units per partial sum of hWᵀ: fixed, so results do not depend on threads. */
#define CHUNK 128
#define MR 6      /* rows of an A panel for the AVX2 tiles (6 × 16) */
#define MR512 10  /* rows of an A panel for the AVX-512 tiles (10 × 32) */
#define NR 16     /* columns of a B panel (both paths) */
#define CD1_MAX_THREADS 64

/* Which path (tiles and element-wise code) runs: set per epoch by cd1_select_isa()
 * (cd1_isa.c), with the panel height of A that goes with it (MR or MR512). */
extern int cd1_use_avx512;
extern int cd1_mr;

/* `count` floats (plus 16 of slack), zeroed, 64-byte aligned; NULL when out of memory.
 * Freed with free(). */
float *aligned_floats(int64_t count);

#endif /* DEEPBOF_NATIVE_CD1_COMMON_H_ */
