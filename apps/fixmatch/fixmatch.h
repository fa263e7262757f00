// The fixmatch program's body (apps/fixmatch/main.cpp is its main), in the library so the tests run
// it in-process on generated data.
#pragma once

namespace tessera {

// Parses the flags, trains, evaluates and returns the exit status; throws UsageError (exit 2)
// or Error (exit 1) as run_program (apps/run/training_run.h) expects.
int fixmatch_main(int argc, const char* const* argv);

}  // namespace tessera
