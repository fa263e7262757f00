// The sub-commands of build/bench (apps/tools/bench/main.cpp). Each parses its own flags from
// argv[1..argc) (argv[0] is the sub-command name), prints a human summary and, as its last
// line, one JSON object with the numbers; returns the exit code.
#pragma once

#include <string>

namespace tessera {

// A flag's value as a whole integer in [lo, hi], or a UsageError naming the flag ("3x", "2.5"
// and "0x10" are refused, not read as 3, 2 and 0); as a number in [lo, hi] for bench_float.
int bench_int(const std::string& flag, const std::string& v, int lo, int hi);
float bench_float(const std::string& flag, const std::string& v, float lo, float hi);

int bench_train_step(int argc, char** argv);
int bench_teacher_update(int argc, char** argv);
int bench_augment(int argc, char** argv);

}  // namespace tessera
