// Picking OpenBLAS's AVX-512 kernels on CPUs its build does not know.
//
// Debian's OpenBLAS 0.3.21 (a DYNAMIC_ARCH build) predates AMD Zen 4 / Zen 5 and runs its
// Haswell (AVX2) kernels there although the CPU has AVX-512; its SkylakeX kernels run sgemm
// about 1.7x faster on those cores (bench/RESULTS.md). OpenBLAS reads OPENBLAS_CORETYPE once,
// when the library is loaded, so the choice is remade here, before main(), through the two
// entry points a DYNAMIC_ARCH build exports for this: gotoblas_dynamic_quit() drops the kernel
// table, gotoblas_dynamic_init() picks it again honouring OPENBLAS_CORETYPE. Nothing changes
// when the user set OPENBLAS_CORETYPE, when OpenBLAS already chose an AVX-512 core, or when the
// CPU lacks any AVX-512 subset the SkylakeX kernels use.
#include "kernels/cpu/blas_core.h"

#include <cblas.h>

#include <cstdlib>
#include <cstring>

extern "C" {
void gotoblas_dynamic_init(void);
void gotoblas_dynamic_quit(void);
}

namespace kernels::cpu {
namespace {

bool has_avx512_for_skylakex() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

bool select_core() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || !has_avx512_for_skylakex()) return false;
  const char* core = openblas_get_corename();
  if (std::strcmp(core, "Haswell") != 0 && std::strcmp(core, "Zen") != 0) return false;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  return true;
}

const bool core_selected = select_core();  // runs before main(), after OpenBLAS is loaded

}  // namespace

const char* blas_core_name() {
  (void)core_selected;
  return openblas_get_corename();
}

}  // namespace kernels::cpu
