// FixMatch with a TMA / SE / STS smoothed teacher: see apps/fixmatch/fixmatch.cpp.
#include "apps/fixmatch/fixmatch.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "kernels/cpu/blas_kernels.h"

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  tessera::take_stop_signals();  // before any thread is made: apps/run/run_directory.h
  return tessera::run_program("fixmatch", [&] { return tessera::fixmatch_main(argc, argv); });
}
