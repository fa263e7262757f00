// The sub-commands of build/bench (apps/tools/bench/main.cpp). Each parses its own flags from
// argv[1..argc) (argv[0] is the sub-command name), prints a human summary and, as its last
// line, one JSON object with the numbers; returns the exit code.
#pragma once

namespace tessera {

int bench_train_step(int argc, char** argv);
int bench_teacher_update(int argc, char** argv);
int bench_augment(int argc, char** argv);

}  // namespace tessera
