/* The element-wise code of the CD-1 kernel on 16 lanes (AVX-512F, with FMA): the
 * templates cd1_random_simd.h and cd1_math_simd.h instantiated with CD1_WIDTH 16. Only
 * AVX-512F is used, because the run-time check (cd1_avx512_supported) asks for nothing
 * more. */
#include "cd1_common.h"

#ifdef CD1_X86
#pragma GCC target("avx512f,avx2,fma")
#define CD1_WIDTH 16
#include "cd1_random_simd.h"
#include "cd1_math_simd.h"
#endif
