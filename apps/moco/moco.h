// build/moco: MoCo v2 (Chen et al. 2020) with a TMA / SE / STS key encoder (apps/moco/main.cpp
// is its main). In the library so the tests can run whole training runs in-process.
#pragma once

namespace tessera {

// Parses argv (argv[0] is the program name), trains and evaluates; returns the exit code
// (0 done or stopped cleanly with a checkpoint; errors are thrown: UsageError, Error).
int moco_main(int argc, const char* const* argv);

}  // namespace tessera
