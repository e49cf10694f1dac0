/* The code path of the CD-1 kernel, chosen at run time (cd1_isa.h). */
#include <string.h>

#include "cd1_common.h"
#include "cd1_isa.h"

int cd1_use_avx512 = 0;
int cd1_mr = MR;

int cd1_cpu_supported(void) {
#ifdef CD1_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

int cd1_avx512_supported(void) {
#ifdef CD1_X86
  __builtin_cpu_init();
  return cd1_cpu_supported() && __builtin_cpu_supports("avx512f");
#else
  return 0;
#endif
}

const char *cd1_select_isa(const char *wanted, cd1_isa_status *status) {
  *status = CD1_ISA_OK;
  if (!cd1_cpu_supported()) {
    cd1_use_avx512 = 0;
    cd1_mr = MR;
    return "none";
  }
  if (wanted && *wanted && strcmp(wanted, "avx2") != 0 && strcmp(wanted, "avx512") != 0 &&
      strcmp(wanted, "auto") != 0) {
    *status = CD1_ISA_BAD_NAME;
    return NULL;
  }
  if (wanted && strcmp(wanted, "avx512") == 0 && !cd1_avx512_supported()) {
    *status = CD1_ISA_NO_AVX512;
    return NULL;
  }
  cd1_use_avx512 = cd1_avx512_supported() && !(wanted && strcmp(wanted, "avx2") == 0);
  cd1_mr = cd1_use_avx512 ? MR512 : MR;
  return cd1_use_avx512 ? "avx512" : "avx2";
}
