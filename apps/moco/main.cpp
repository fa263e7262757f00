// build/moco: MoCo v2 self-supervised pre-training with a TMA / SE / STS key encoder,
// evaluation (kNN monitor, linear probe, random-init baseline) and exact resume. The program
// lives in apps/moco/moco.cpp; `moco --help` lists every flag.
#include "apps/moco/moco.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "kernels/cpu/blas_kernels.h"

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  tessera::take_stop_signals();  // before any thread is made: apps/run/run_directory.h
  return tessera::run_program("moco", [&] { return tessera::moco_main(argc, argv); });
}
