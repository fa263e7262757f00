// moco's configuration: every flag `moco --help` lists, with its default. A config file
// (--config FILE) and the command line fill the same struct; on --resume the saved one wins
// (apps/run/training_run.h).
#pragma once

#include <cstdint>
#include <string>

#include "apps/run/distributed_run.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_options.h"

namespace tessera::moco {

struct Config {
  RunOptions run;
  DistributedOptions dist;  // --collective-timeout, --check-replicas (--sync-bn is refused: see moco.cpp)
  // data: MoCo v2's augmentation is BYOL's views with blur p 0.5 on both and no solarize
  std::string data = "fashion-mnist";
  int image_size = 0;  // folder data: the side images are resized to (0: 32)
  int crop_size = 0;
  std::string crop_interpolation = "bilinear";
  float crop_scale_min = 0.2f;
  float blur_prob = 0.5f;
  // model
  std::string arch = "resnet18";
  std::string stem = "cifar";
  int width = 64;
  int head_hidden = 0;  // 0: the backbone's feature width (2048 for ResNet-50)
  int head_dim = 128;
  // optimisation: SGD, lr x batch / 256, cosine to 0
  double lr = 0.03;
  double weight_decay = 1e-4;
  double sgd_momentum = 0.9;
  int64_t batch_size = 256;
  int64_t epochs = 200;
  int64_t steps = 0;
  double warmup_epochs = 0;
  int64_t stop_after = 0;
  // contrastive
  int64_t queue = 65536;
  float temperature = 0.2f;
  int64_t bn_splits = 8;
  // key encoder (the teacher)
  TeacherOptions teacher{0.5f, 0.999f, "constant", "own"};  // the STS paper's p for MoCo (../shared/REFERENCE.md)
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

// The learning rate the optimizer gets at its peak: --lr x batch / 256 (MoCo's linear rule).
double peak_lr(const Config& c);

}  // namespace tessera::moco
