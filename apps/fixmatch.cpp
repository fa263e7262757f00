// FixMatch with a TMA / SE / STS smoothed teacher: see apps/common/fixmatch.cpp.
#include "apps/common/fixmatch.h"
#include "apps/common/training_run.h"

int main(int argc, char** argv) {
  return tessera::run_program("fixmatch", [&] { return tessera::fixmatch_main(argc, argv); });
}
