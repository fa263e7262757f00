// kernels/cpu/blas_kernels.h: the test binary itself calls restart_with_better_blas_core()
// first (tests/main.cpp), so by the time these run OpenBLAS must be on a family that uses the
// CPU's vector units, and a user's OPENBLAS_CORETYPE must be left as it is.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cpu/blas_kernels.h"

namespace {

TEST(BlasKernels, NeverOverridesTheUsersChoice) {
  // After the restart the variable is always set (by the user or by the restart), and a set
  // variable means no further restart.
  if (!std::getenv("OPENBLAS_CORETYPE")) GTEST_SKIP() << "OPENBLAS_CORETYPE unset: OpenBLAS chose by itself";
  EXPECT_EQ(kernels::cpu::better_blas_core(), "");
}

TEST(BlasKernels, RunsVectorKernelsAfterTheRestart) {
  const char* keep = std::getenv("TESSERA_KEEP_BLAS_CORE");
  if (keep && std::strcmp(keep, "0") != 0) GTEST_SKIP() << "TESSERA_KEEP_BLAS_CORE is set: the fallback is kept";
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  if (set && std::string(set) != "SkylakeX" && std::string(set) != "Haswell")
    GTEST_SKIP() << "OPENBLAS_CORETYPE=" << set << " was chosen by the user";
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
    GTEST_SKIP() << "this CPU has no AVX2 + FMA: Prescott is the right family";
  EXPECT_NE(kernels::cpu::blas_core_name(), "Prescott") << "OPENBLAS_CORETYPE=" << std::getenv("OPENBLAS_CORETYPE");
#else
  GTEST_SKIP() << "not x86-64: OpenBLAS's own choice stands";
#endif
}

}  // namespace
