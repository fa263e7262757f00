// build/bench: micro- and macro-benchmarks with results as one JSON line at the end.
//   bench train-step      forward + backward + SGD step of a backbone (apps/tools/bench/train_step.cpp)
//   bench teacher-update  the fused TMA / SE / STS update over a parameter arena (teacher_update.cpp)
//   bench augment         the augmentation pipeline, images/s (augment.cpp)
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <exception>

#include "apps/tools/bench/bench.h"
#include "apps/run/training_run.h"
#include "engine/check.h"
#include "kernels/cpu/blas_kernels.h"

namespace tessera {

int bench_int(const std::string& flag, const std::string& v, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE || x < lo || x > hi)
    throw UsageError(cat(flag, ": expected an integer in [", lo, ", ", hi, "], found '", v, "'"));
  return static_cast<int>(x);
}

float bench_float(const std::string& flag, const std::string& v, float lo, float hi) {
  char* end = nullptr;
  const float x = std::strtof(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= lo && x <= hi))
    throw UsageError(cat(flag, ": expected a number in [", lo, ", ", hi, "], found '", v, "'"));
  return x;
}

}  // namespace tessera

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  struct Command {
    const char* name;
    int (*run)(int, char**);
  };
  const Command commands[] = {
      {"train-step", tessera::bench_train_step},
      {"teacher-update", tessera::bench_teacher_update},
      {"augment", tessera::bench_augment},
  };
  if (argc >= 2) {
    for (const Command& c : commands) {
      if (std::strcmp(argv[1], c.name) != 0) continue;
      // Exit 2 on a usage error, 1 on another; under mpirun the error ends every rank.
      const std::string program = std::string("bench ") + c.name;
      return tessera::run_program(program.c_str(), [&] { return c.run(argc - 1, argv + 1); });
    }
  }
  const bool help = argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0);
  std::fprintf(help ? stdout : stderr, "usage: bench train-step|teacher-update|augment [flags] (each takes --help)\n");
  return help ? 0 : 2;
}
