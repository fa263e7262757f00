// Which OpenBLAS kernels the CPU backend runs.
//
// Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels when the library loads, from the
// CPU model number. A CPU newer than the library (or a virtual CPU with a generic model name)
// falls back to "Prescott": SSE3 kernels, 3-4x slower here than the AVX-512 ones on the same
// machine (bench/RESULTS.md, "OpenBLAS kernel choice"). The choice can only be changed before
// the library loads, through the environment variable OPENBLAS_CORETYPE, so a program that
// finds itself on the fallback restarts itself once with the variable set.
#pragma once

#include <string>

namespace kernels::cpu {

// The kernel family OpenBLAS runs ("SkylakeX", "Haswell", "Prescott", ...).
std::string blas_core_name();

// The family this CPU should use when OpenBLAS fell back to Prescott ("SkylakeX" with AVX-512,
// "Haswell" with AVX2 + FMA), or "" when OpenBLAS's own choice stands: it chose something
// else, or the user set OPENBLAS_CORETYPE (their choice is never overridden).
std::string better_blas_core();

// Called first thing in main(): when better_blas_core() names a family, prints one line to
// stderr and re-executes this program with OPENBLAS_CORETYPE set to it (argv unchanged). Returns
// only when no restart is needed or the restart failed (then the program goes on, slower).
// TESSERA_KEEP_BLAS_CORE=1 disables it.
void restart_with_better_blas_core(char** argv);

}  // namespace kernels::cpu
