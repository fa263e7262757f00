// fixmatch's configuration: every flag `fixmatch --help` lists, with its default. A config file
// (--config FILE) and the command line fill the same struct; on --resume the saved one wins
// (apps/run/training_run.h).
#pragma once

#include <cstdint>
#include <string>

#include "apps/run/distributed_run.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_options.h"

namespace tessera::fixmatch {

struct Config {
  RunOptions run;
  DistributedOptions dist;  // --sync-bn, --collective-timeout, --check-replicas
  std::string data = "fashion-mnist";
  int image_size = 0;  // folder data: the side images are resized to (0: 32)
  int64_t labels = 40;
  // model
  std::string arch = "wrn-28-2";
  std::string stem = "cifar";
  int width = 64;
  // FixMatch
  int64_t batch_size = 64;
  int64_t mu = 7;
  double threshold = 0.95;
  double lambda_u = 1.0;
  int64_t steps = int64_t{1} << 20;
  double lr = 0.03;
  double sgd_momentum = 0.9;
  double weight_decay = 5e-4;
  // teacher
  TeacherOptions teacher{0.5f, 0.999f, "constant", "copy"};  // a constant momentum: no --momentum-schedule
  std::string pseudo_labels = "student";
  // evaluation and invocation
  int64_t eval_every = 1000;
  int64_t eval_batch = 500;
  bool eval_only = false;
  int64_t stop_after = 0;
};

// Registers every flag on `o`, bound to the fields of `c`, with its range check.
void add_options(Options& o, Config& c);

}  // namespace tessera::fixmatch
