// See kernels/cpu/blas_kernels.h. No kernel here: this decides which of OpenBLAS's kernels run.
#include "kernels/cpu/blas_kernels.h"

#include <cblas.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kernels::cpu {

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

std::string better_blas_core() {
  if (std::getenv("OPENBLAS_CORETYPE")) return "";
  if (blas_core_name() != "Prescott") return "";
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

void restart_with_better_blas_core(char** argv) {
  const char* keep = std::getenv("TESSERA_KEEP_BLAS_CORE");
  if (keep && std::strcmp(keep, "0") != 0) return;
  const std::string core = better_blas_core();
  if (core.empty()) return;
  std::fprintf(stderr,
               "blas: OpenBLAS chose its generic Prescott kernels for this CPU; restarting with "
               "OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE yourself to choose)\n",
               core.c_str());
  std::fflush(nullptr);
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "blas: restart failed (%s); going on with the Prescott kernels\n", std::strerror(errno));
}

}  // namespace kernels::cpu
