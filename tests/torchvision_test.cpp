// tessera's models against PyTorch: each case initialises a model as build/init does,
// perturbs its BatchNorm parameters and running statistics (so eval-mode BN is not the
// identity), saves it, runs a small input through tessera in eval mode, and asks
// tests/torchvision_check.py to load the checkpoint into torchvision (or the FixMatch port's
// WideResNet) with load_state_dict(strict=True) and compare eval-mode outputs within 1e-4
// relative, and a train-mode step (output and every parameter's gradient) within 1e-3.
// Skipped, with the reason, where /usr/bin/python3 cannot import torch and torchvision.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sys/wait.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/checkpoint.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

std::string script_path() {
  // Tests run from the repository root (make test); __FILE__ is tests/torchvision_test.cpp.
  return (fs::path(__FILE__).parent_path() / "torchvision_check.py").string();
}

// Uniform values in [lo, hi) from Philox, a pure function of (step, index).
std::vector<float> uniform(int64_t n, float lo, float hi, uint64_t step) {
  std::vector<float> v(static_cast<size_t>(n));
  kernels::PhiloxState rng(123, kernels::philox_subsequence(kernels::kStreamTest, step), 0);
  for (float& x : v) x = lo + (hi - lo) * rng.uniform();
  return v;
}

// BN gamma in [0.5, 1.5), beta in [-0.2, 0.2), running mean in [-0.2, 0.2), var in [0.5, 1.5).
void perturb_batch_norms(Model& m) {
  uint64_t step = 1000;
  for (size_t i = 0; i < m.param_table().size(); ++i) {
    const Slot& s = m.param_table()[i];
    if (s.kind == ParamKind::BnWeight) from_host(m.params().slot(i), uniform(s.numel, 0.5f, 1.5f, step++));
    if (s.kind == ParamKind::BnBias) from_host(m.params().slot(i), uniform(s.numel, -0.2f, 0.2f, step++));
  }
  for (size_t i = 0; i < m.buffer_table().size(); ++i) {
    const Slot& s = m.buffer_table()[i];
    if (s.kind == ParamKind::BnRunningMean) from_host(m.buffers().slot(i), uniform(s.numel, -0.2f, 0.2f, step++));
    if (s.kind == ParamKind::BnRunningVar) from_host(m.buffers().slot(i), uniform(s.numel, 0.5f, 1.5f, step++));
    if (s.kind == ParamKind::BnNumBatches) fill_value(m.buffers().slot(i), 3.0f);
  }
}

struct Case {
  const char* arch;
  const char* stem;
  int in_channels, num_classes, size;
  int width;
  bool train_step;  // also compare a train-mode step (output and every gradient)
  uint64_t input_draw = 1;  // the Philox subsequence the input is drawn from
};

// Saves the model and (input, tessera's eval-mode output) next to each other under `base`.
void write_case(const Case& c, const std::string& base) {
  ModelSpec spec;
  spec.arch = c.arch;
  spec.stem = c.stem;
  spec.in_channels = c.in_channels;
  spec.num_classes = c.num_classes;
  spec.width = c.width;
  auto model = make_model(spec, Device::CPU, /*initialise=*/false);
  model->init(5);
  perturb_batch_norms(*model);

  const Shape shape{2, c.in_channels, c.size, c.size};
  const std::vector<float> input = uniform(shape.numel(), -2.0f, 2.0f, c.input_draw);
  Workspace ws(Device::CPU);
  Graph g(ws);
  Var* out;
  {
    NoGradScope no_grad(g);
    const Tensor x = ws.alloc(shape);
    from_host(x, input);
    out = model->forward(g, g.input(x, "input"), /*train=*/false);
  }

  SafetensorsWriter mw;
  add_model(mw, *model);  // before the train step below moves the running statistics
  mw.write(base + "_model.safetensors");
  SafetensorsWriter io;
  io.add_f32("input", shape.vec(), input.data());
  io.add_f32("output", out->value);
  if (!c.train_step) {
    io.write(base + "_io.safetensors");
    return;
  }

  // A train-mode step: output and the gradients of sum(output * r) for every parameter.
  Graph train(ws);
  ws.reset();
  const Tensor x2 = ws.alloc(shape);
  from_host(x2, input);
  Var* y = model->forward(train, train.input(x2, "input"), /*train=*/true);
  const std::vector<float> r = uniform(y->value.numel(), -1.0f, 1.0f, 2);
  const Tensor seed = ws.alloc(y->value.shape);
  from_host(seed, r);
  io.add_f32("train_output", y->value);
  io.add_f32("r", y->value.shape.vec(), r.data());
  model->grads().zero();
  train.backward(y, seed);
  for (const Slot& s : model->param_table().slots()) io.add_f32("grad." + s.name, model->grads().slot(s.name));
  io.write(base + "_io.safetensors");
}

// One Python process for every case: importing torch costs seconds on a busy machine.
TEST(Torchvision, StrictLoadAndSameOutputs) {
  // On the reference CPU kernels, the oracle: the train-mode cases are chosen to have no ReLU
  // input within rounding of zero, which holds for one rounding, not for every tier's (the fast
  // tier is compared with the reference shape by shape in tests/conv_fast_test.cpp).
  CpuKernelsScope reference(CpuKernels::Reference);
  ASSERT_TRUE(fs::exists(script_path())) << "run the tests from the repository root: " << script_path() << " not found";
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 not found";
  const Case cases[] = {
      {"resnet18", "imagenet", 3, 1000, 64, 64, true},  // torchvision.models.resnet18() as is
      // A train-mode gradient comparison in float32 needs a case where no ReLU input lies
      // within rounding of zero: such a unit takes the other branch in float32 (tessera's or
      // PyTorch's) than in the float64 reference and moves gradients by percents. The
      // expected number of such units grows with the number of units: resnet50 at width 64 on
      // 64 x 64, or at width 8 on 32 x 32, has one or two for most inputs (measured), so its
      // bottleneck backward is checked at width 8 on 16 x 16 with an input (draw 2) that has
      // none in PyTorch; torchvision_check.py prints the count for every case, and tries the
      // units nearest zero on the other branch where tessera's own rounding flipped one.
      {"resnet50", "imagenet", 3, 10, 64, 64, false},
      {"resnet50", "cifar", 3, 10, 16, 8, true, 2},
      {"resnet18", "cifar", 1, 0, 16, 64, true},  // conv1 replaced, maxpool removed, fc = Identity
      {"wrn-28-2", "cifar", 3, 10, 16, 64, true},  // the FixMatch port's WideResNet
  };
  const std::string dir = (fs::path(::testing::TempDir()) / cat("tessera_tv_", ::getpid())).string();
  fs::create_directories(dir);
  std::string args;
  for (const Case& c : cases) {
    const std::string base = cat(dir, "/", c.arch, "_", c.stem, "_", c.width, "_", c.input_draw);
    write_case(c, base);
    args += cat(" ", base, "_model.safetensors ", base, "_io.safetensors");
  }
  const std::string cmd = cat("/usr/bin/python3 ", script_path(), args, " > ", dir, "/log 2>&1");
  const int status = std::system(cmd.c_str());
  std::ifstream log(dir + "/log");
  std::stringstream text;
  text << log.rdbuf();
  fs::remove_all(dir);
  std::printf("%s", text.str().c_str());
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (rc == 77) GTEST_SKIP() << text.str();
  EXPECT_EQ(rc, 0) << cmd << "\n" << text.str();
  // Exit 0 must mean every case was compared, not that the script compared none.
  size_t ok_lines = 0;
  std::istringstream lines(text.str());
  for (std::string line; std::getline(lines, line);) ok_lines += line.rfind("OK ", 0) == 0;
  EXPECT_EQ(ok_lines, std::size(cases)) << text.str();
}

}  // namespace
}  // namespace tessera
