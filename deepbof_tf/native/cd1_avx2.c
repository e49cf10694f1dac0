/* The element-wise code of the CD-1 kernel on 8 lanes (AVX2/FMA): the templates
 * cd1_random_simd.h and cd1_math_simd.h instantiated with CD1_WIDTH 8. */
#include "cd1_common.h"

#ifdef CD1_X86
#pragma GCC target("avx2,fma")
#define CD1_WIDTH 8
#include "cd1_random_simd.h"
#include "cd1_math_simd.h"
#endif
