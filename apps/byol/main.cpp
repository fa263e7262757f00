// build/byol: BYOL self-supervised pre-training with a TMA / SE / STS teacher, evaluation
// (kNN monitor, linear probe, random-init baseline) and exact resume. The program lives in
// apps/byol/byol.cpp; `byol --help` lists every flag.
#include "apps/byol/byol.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "kernels/cpu/blas_kernels.h"

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  tessera::take_stop_signals();  // before any thread is made: apps/run/run_directory.h
  return tessera::run_program("byol", [&] { return tessera::byol_main(argc, argv); });
}
