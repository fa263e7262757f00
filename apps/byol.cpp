// build/byol: BYOL self-supervised pre-training with a TMA / SE / STS teacher, evaluation
// (kNN monitor, linear probe, random-init baseline) and exact resume. The program lives in
// apps/common/byol.cpp; `byol --help` lists every flag.
#include "apps/common/byol.h"
#include "apps/common/training_run.h"

int main(int argc, char** argv) {
  return tessera::run_program("byol", [&] { return tessera::byol_main(argc, argv); });
}
