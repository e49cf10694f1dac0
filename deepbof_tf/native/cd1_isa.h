/* Which code path the CD-1 kernel runs (cd1_isa.c): AVX-512 where the CPU has AVX-512F,
 * else AVX2/FMA; CPUs without AVX2 and FMA run neither. */
#ifndef DEEPBOF_NATIVE_CD1_ISA_H_
#define DEEPBOF_NATIVE_CD1_ISA_H_

typedef enum {
  CD1_ISA_OK = 0,
  CD1_ISA_BAD_NAME,   /* `wanted` is none of auto, avx2, avx512 */
  CD1_ISA_NO_AVX512,  /* avx512 asked for on a CPU without AVX-512F */
} cd1_isa_status;

/* True if this CPU can run the kernel (x86-64 with AVX2 and FMA). */
int cd1_cpu_supported(void);

/* True if it can also run the AVX-512 path. */
int cd1_avx512_supported(void);

/* Sets cd1_use_avx512 and cd1_mr for the next epochs: AVX-512 where the CPU has it,
 * unless `wanted` (NULL, "", "auto", "avx2" or "avx512") asks for AVX2. Returns the name
 * of the path ("avx512", "avx2", or "none" on a CPU without AVX2/FMA), or NULL with
 * *status saying why the request cannot be met (the path is then unchanged). */
const char *cd1_select_isa(const char *wanted, cd1_isa_status *status);

#endif /* DEEPBOF_NATIVE_CD1_ISA_H_ */
