// byol's configuration: every flag `byol --help` lists, with its default. A config file
// (--config FILE) and the command line fill the same struct; on --resume the saved one wins
// (apps/run/training_run.h).
#pragma once

#include <cstdint>
#include <string>

#include "apps/run/distributed_run.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_options.h"

namespace tessera::byol {

struct Config {
  RunOptions run;
  DistributedOptions dist;  // --sync-bn, --collective-timeout, --check-replicas
  // data
  std::string data = "fashion-mnist";
  int image_size = 0;  // folder data: the side images are resized to (0: 32)
  int crop_size = 0;
  std::string crop_interpolation = "bilinear";
  float crop_scale_min = 0.08f;
  float blur_prob_1 = 1.0f, blur_prob_2 = 0.1f;
  float solarize_prob_1 = 0.0f, solarize_prob_2 = 0.2f;
  // model
  std::string arch = "resnet18";
  std::string stem = "cifar";
  int width = 64;
  int proj_hidden = 4096, proj_dim = 256, pred_hidden = 4096;
  // optimisation
  std::string optimizer = "lars";
  double lr = 1.0;
  double weight_decay = 1e-5;
  double sgd_momentum = 0.9;
  double lars_eta = 0.02;
  bool lars_clip_lr = false;
  int64_t batch_size = 256;
  int64_t epochs = 200;
  int64_t steps = 0;
  double warmup_epochs = 10;
  int64_t stop_after = 0;
  // teacher: STS at p 0.7 (../shared/REFERENCE.md), BYOL's m_0 0.99 rising to 1 by a cosine
  TeacherOptions teacher{0.7f, 0.99f, "cosine", "own"};
  // evaluation
  int64_t knn_every = 0;
  bool eval_baseline = false;
  bool eval_only = false;
  int64_t eval_train_limit = 0;
  int probe_epochs = 30;
  int64_t eval_batch = 256;
};

// Registers every flag on `o`, bound to the fields of `c`, with its range check.
void add_options(Options& o, Config& c);

}  // namespace tessera::byol
