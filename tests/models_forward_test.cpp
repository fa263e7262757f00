// Whole models in train mode on the CPU: every parameter gets a finite gradient (all of them
// non-zero, except the WideResNet BNs whose output the port discards), running statistics
// move, and eval mode is independent of the batch. The values of outputs and gradients are
// checked against PyTorch in tests/torchvision_test.cpp. (Central differences through a
// whole network in train mode are too ill-conditioned to be a useful oracle: BN over a few
// values per channel turns eps = 1e-2 into O(1) errors.)
#include <gtest/gtest.h>

#include <cmath>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "tests/op_case.h"

namespace tessera {
namespace {

std::vector<float> uniform(int64_t n, uint64_t step) {
  std::vector<float> v(static_cast<size_t>(n));
  kernels::PhiloxState rng(9, kernels::philox_subsequence(kernels::kStreamTest, step), 0);
  for (float& x : v) x = 2.0f * rng.uniform() - 1.0f;
  return v;
}

ModelSpec small(const std::string& arch, const std::string& stem = "cifar", int width = 8) {
  ModelSpec s;
  s.arch = arch;
  s.stem = stem;
  s.width = width;
  s.num_classes = 5;
  if (arch == "mlp") {
    s.num_classes = 0;
    s.mlp_sizes = {6, 16, 4};
  }
  return s;
}

Shape input_shape(const Model& m, int64_t n) {
  if (m.spec().arch == "mlp") return Shape{n, m.spec().mlp_sizes[0]};
  return Shape{n, m.spec().in_channels, 16, 16};
}

// sum(out * r) for a fixed direction r; backward seeded with r when `grad` is set.
double project(Model& m, Workspace& ws, const std::vector<float>& input, Shape shape, bool train, bool grad) {
  Graph g(ws);
  ws.reset();
  const Tensor x = ws.alloc(shape);
  from_host(x, input);
  Var* out = m.forward(g, g.input(x, "input"), train);
  const std::vector<float> r = uniform(out->value.numel(), 77);
  const std::vector<float> y = to_host_f32(out->value);
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * r[i];
  if (grad) {
    const Tensor seed = ws.alloc(out->value.shape);
    from_host(seed, r);
    g.backward(out, seed);
  }
  return s;
}

class ModelTrainStep : public ::testing::TestWithParam<const char*> {};

TEST_P(ModelTrainStep, GradientsAndRunningStatistics) {
  const std::string arch = GetParam();
  auto m = make_model(small(arch, arch == std::string("resnet50") ? "imagenet" : "cifar"), Device::CPU);
  m->init(21);
  Workspace ws(Device::CPU);
  const Shape shape = input_shape(*m, 4);
  const std::vector<float> input = uniform(shape.numel(), 1);
  project(*m, ws, input, shape, /*train=*/true, /*grad=*/true);

  const std::vector<float> grads = to_host_f32(m->grads().all());
  for (const Slot& s : m->param_table().slots()) {
    double sq = 0;
    bool finite = true;
    for (int64_t i = 0; i < s.numel; ++i) {
      const float v = grads[static_cast<size_t>(s.offset + i)];
      finite = finite && std::isfinite(v);
      sq += static_cast<double>(v) * v;
    }
    EXPECT_TRUE(finite) << arch << ": non-finite gradient in " << s.name;
    // The port computes and discards bn1 in the first block of block2 / block3.
    const bool unused = s.name == "block2.layer.0.bn1.weight" || s.name == "block2.layer.0.bn1.bias" ||
                        s.name == "block3.layer.0.bn1.weight" || s.name == "block3.layer.0.bn1.bias";
    if (unused)
      EXPECT_EQ(sq, 0.0) << arch << ": " << s.name;
    else
      EXPECT_GT(sq, 0.0) << arch << ": no gradient reached " << s.name;
  }
  const std::vector<float> buffers = to_host_f32(m->buffers().all());
  for (const Slot& s : m->buffer_table().slots()) {
    if (s.kind != ParamKind::BnNumBatches) continue;
    const bool unused = s.name.find("block2.layer.0.bn1.") == 0 || s.name.find("block3.layer.0.bn1.") == 0;
    EXPECT_EQ(buffers[static_cast<size_t>(s.offset)], unused ? 0.0f : 1.0f) << arch << ": " << s.name;
  }
}

TEST_P(ModelTrainStep, EvalModeDoesNotDependOnTheBatch) {
  const std::string arch = GetParam();
  auto m = make_model(small(arch, arch == std::string("resnet50") ? "imagenet" : "cifar"), Device::CPU);
  m->init(22);
  Workspace ws(Device::CPU);
  const Shape four = input_shape(*m, 4), two = input_shape(*m, 2);
  const std::vector<float> input = uniform(four.numel(), 2);
  project(*m, ws, input, four, true, false);  // move the running statistics off their init

  const auto eval_out = [&](Shape shape) {
    Graph g(ws);
    ws.reset();
    NoGradScope no_grad(g);
    const Tensor x = ws.alloc(shape);
    from_host(x, std::vector<float>(input.begin(), input.begin() + shape.numel()));
    return to_host_f32(m->forward(g, g.input(x), false)->value);
  };
  const std::vector<float> a = eval_out(four), b = eval_out(two);
  ASSERT_EQ(b.size() * 2, a.size());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5f * std::max(1.0f, std::fabs(a[i]))) << arch << " " << i;
}

// An empty batch is refused by the engine with the same message on both backends: the first
// layer that needs rows (the linear head) names the shapes. On CUDA the convolutions and
// BatchNorms before it must not stop it with a cuDNN error first (cuDNN refuses a zero
// dimension in a descriptor), so their launchers return on N = 0 as the CPU's loops do.
std::string empty_batch_error(const std::string& arch, Device device) {
  auto m = make_model(small(arch, arch == std::string("resnet50") ? "imagenet" : "cifar"), device);
  m->init(23);
  Workspace ws(device);
  Graph g(ws);
  NoGradScope no_grad(g);
  try {
    m->forward(g, g.input(ws.alloc(input_shape(*m, 0))), /*train=*/false);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

TEST_P(ModelTrainStep, AnEmptyBatchIsRefusedByTheLinearHead) {
  const std::string what = empty_batch_error(GetParam(), Device::CPU);
  EXPECT_EQ(what.rfind("linear: x (0, ", 0), 0u) << what;
  EXPECT_NE(what.find("need sizes in [1, 2^31)"), std::string::npos) << what;
}

TEST_P(ModelTrainStep, AnEmptyBatchIsRefusedOnCudaAsOnTheCpu) {
  std::string why;
  if (!testing::cuda_testable(&why)) GTEST_SKIP() << why;
  EXPECT_EQ(empty_batch_error(GetParam(), Device::CUDA), empty_batch_error(GetParam(), Device::CPU));
}

INSTANTIATE_TEST_SUITE_P(Models, ModelTrainStep, ::testing::Values("resnet18", "resnet50", "wrn-10-1", "mlp"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace tessera
