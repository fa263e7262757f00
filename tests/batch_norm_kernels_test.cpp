// BatchNorm's kernels (kernels/batch_norm.h) beyond the op's gradient checks in
// tests/ops_norm_test.cpp: num_batches_tracked in one launch a step, backward outputs that are
// scratch written rather than added into, the CUDA kernels' segments (a function of the shape),
// and both CUDA implementations of each pass (tessera's and cuDNN's, kernels/cuda/runtime.h)
// against the CPU: the GPU halves are SKIPPED without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/workspace.h"
#include "kernels/batch_norm.h"
#include "tests/op_case.h"
#if TESSERA_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace tessera {
namespace {

// num_batches_tracked: every train-mode forward counts, and the graph adds a step's counts with
// one batch_norm_count_batches launch, where each layer's forward used to launch its own.
TEST(BatchNormCounts, OneLaunchAddsEveryLayersForwards) {
  Workspace ws(Device::CPU);
  OwnedTensor x(Device::CPU, Shape{4, 3, 2, 2}), gamma(Device::CPU, Shape{3}), beta(Device::CPU, Shape{3});
  OwnedTensor mean(Device::CPU, Shape{3}), var(Device::CPU, Shape{3}), count_a(Device::CPU, Shape{1}),
      count_b(Device::CPU, Shape{1});
  std::vector<float> xs(48);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = std::sin(0.7f * static_cast<float>(i));
  from_host(x.t, xs);
  fill_value(gamma.t, 1.0f);
  fill_zero(beta.t);
  fill_zero(mean.t);
  fill_value(var.t, 1.0f);
  fill_value(count_a.t, 5.0f);
  fill_zero(count_b.t);
  profile::Profiler prof(profile::StepWindow::parse("0:1"), Device::CPU, "", /*print=*/false);
  prof.begin_step(0);
  {
    Graph g(ws);
    ops::BatchNormOptions train;
    Var* in = g.input(x.t, "x");
    Var* gv = g.input(gamma.t, "gamma");
    Var* bv = g.input(beta.t, "beta");
    ops::batch_norm2d(g, in, gv, bv, {mean.t, var.t, count_a.t}, train);  // layer a, twice
    ops::batch_norm2d(g, in, gv, bv, {mean.t, var.t, count_a.t}, train);
    ops::batch_norm2d(g, in, gv, bv, {mean.t, var.t, count_b.t}, train);  // layer b, once
    ops::BatchNormOptions eval;
    eval.train = false;
    ops::batch_norm2d(g, in, gv, bv, {mean.t, var.t, count_b.t}, eval);  // eval: not counted
    g.clear();
    EXPECT_EQ(to_host_f32(count_a.t)[0], 7.0f);
    EXPECT_EQ(to_host_f32(count_b.t)[0], 1.0f);
    ops::batch_norm2d(g, in, gv, bv, {mean.t, var.t, count_b.t}, train);
  }  // the graph's destruction adds what is pending
  prof.end_step(0);
  EXPECT_EQ(to_host_f32(count_b.t)[0], 2.0f);
  ASSERT_TRUE(prof.window_done());
  int64_t launches = 0, forwards = 0;
  for (const auto& row : prof.report()->rows) {
    if (row.kernel == "batch_norm_count_batches") launches += row.calls;
    if (row.kernel == "batch_norm_forward_train") forwards += row.calls;
  }
  EXPECT_EQ(forwards, 4);
  EXPECT_EQ(launches, 2);  // one per clear / destruction, not one per forward
}

// Backward outputs that are scratch (an input needing no gradient) are written, not added
// into: their old contents - uninitialised workspace, NaN after Workspace::poison() - are
// never read. The CUDA twin does the same (BatchNormBackward.CudaOverwritesScratchOutputsLikeTheCpu).
struct BnBackwardCase {
  int64_t n, c, hw;
  std::vector<float> x, dy, gamma, mean, invstd, var;
  BnBackwardCase(int64_t n_ = 3, int64_t c_ = 5, int64_t hw_ = 7) : n(n_), c(c_), hw(hw_) {
    x.resize(static_cast<size_t>(n * c * hw));
    dy.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = std::sin(0.3f * static_cast<float>(i));
      dy[i] = std::cos(0.9f * static_cast<float>(i));
    }
    for (int64_t k = 0; k < c; ++k) {
      gamma.push_back(0.5f + 0.1f * static_cast<float>(k));
      mean.push_back(0.05f * static_cast<float>(k));
      invstd.push_back(1.0f + 0.2f * static_cast<float>(k));
      var.push_back(0.5f + 0.25f * static_cast<float>(k));
    }
  }
  // dx, dgamma, dbeta after one backward (train or eval) into buffers holding `init`.
  std::vector<std::vector<float>> run(bool eval, uint32_t accumulate, float init, bool cuda = false) const {
    const Device d = cuda ? Device::CUDA : Device::CPU;
    auto up = [&](const std::vector<float>& v) {
      OwnedTensor t(d, Shape{static_cast<int64_t>(v.size())});
      from_host(t.t, v);
      return t;
    };
    OwnedTensor tx = up(x), tdy = up(dy), tg = up(gamma), tm = up(mean), ts = up(invstd), tv = up(var);
    OwnedTensor dx(d, Shape{n * c * hw}), dgamma(d, Shape{c}), dbeta(d, Shape{c});
    OwnedTensor scratch(d, Shape{kernels::batch_norm_scratch(n, c, hw)});
    fill_value(scratch.t, std::numeric_limits<float>::quiet_NaN());  // read before written: NaN
    fill_value(dx.t, init);
    fill_value(dgamma.t, init);
    fill_value(dbeta.t, init);
    if (eval)
      TS_DISPATCH(d, batch_norm_backward_eval, tx.t.f32(), tdy.t.f32(), tg.t.f32(), tm.t.f32(), tv.t.f32(), dx.t.f32(),
                  dgamma.t.f32(), dbeta.t.f32(), n, c, hw, 1e-5f, accumulate, scratch.t.f32());
    else
      TS_DISPATCH(d, batch_norm_backward_train, tx.t.f32(), tdy.t.f32(), tg.t.f32(), tm.t.f32(), ts.t.f32(),
                  dx.t.f32(), dgamma.t.f32(), dbeta.t.f32(), n, c, hw, 1e-5f, accumulate, scratch.t.f32());
    return {to_host_f32(dx.t), to_host_f32(dgamma.t), to_host_f32(dbeta.t)};
  }
};

TEST(BatchNormBackward, ScratchOutputsAreOverwrittenNotAddedInto) {
  const BnBackwardCase k;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (bool eval : {false, true}) {
    const auto want = k.run(eval, kernels::kBnAccumulateAll, 0.0f);  // adding into zeros
    const auto added = k.run(eval, kernels::kBnAccumulateAll, 1.0f);
    const auto written = k.run(eval, 0, nan);
    for (size_t o = 0; o < 3; ++o)
      for (size_t i = 0; i < want[o].size(); ++i) {
        EXPECT_EQ(written[o][i], want[o][i]) << (eval ? "eval" : "train") << " output " << o << "[" << i << "]";
        EXPECT_NEAR(added[o][i], want[o][i] + 1.0f, 2e-6f) << (eval ? "eval" : "train") << " output " << o << "[" << i << "]";
      }
    // One parameter gradient real, the other scratch (a frozen beta).
    const auto mixed = k.run(eval, kernels::kBnAccumulateDx | kernels::kBnAccumulateDgamma, nan);
    EXPECT_TRUE(std::isnan(mixed[0][0]));  // dx added into NaN stays NaN: it was asked to add
    for (size_t i = 0; i < want[2].size(); ++i) EXPECT_EQ(mixed[2][i], want[2][i]) << "dbeta[" << i << "]";
  }
}

// The launch shape of the CUDA kernels with partial sums (tessera's train forward, both
// backwards) is a function of the layer's shape only (so their sums are reproducible): whole
// images, 1024 to 16384 elements a segment, about 2048 blocks.
TEST(BatchNormSegments, FillTheGpuWithinTheirBounds) {
  struct Case {
    int64_t n, c, hw, per, segments;
  };
  for (const Case& k : {Case{256, 64, 1024, 8, 32},   // ResNet-18 CIFAR b256, layer1: 2048 blocks
                        Case{256, 256, 64, 32, 8},    // layer3: 2048 blocks (was 1 segment, 256 blocks)
                        Case{256, 512, 16, 64, 4},    // layer4: 1024-element segments, 2048 blocks
                        Case{64, 64, 12544, 2, 32},   // ResNet-50 224 px stem: capped at 16384 elements
                        Case{256, 4096, 1, 256, 1},   // a projector's BatchNorm1d: one segment
                        Case{50, 1, 64, 16, 4},       // the last segment short
                        Case{0, 8, 16, 1, 0}}) {      // an empty batch: no segment
    EXPECT_EQ(kernels::batch_norm_images_per_segment(k.n, k.c, k.hw), k.per) << k.n << "x" << k.c << "x" << k.hw;
    EXPECT_EQ(kernels::batch_norm_segments(k.n, k.c, k.hw), k.segments) << k.n << "x" << k.c << "x" << k.hw;
    EXPECT_EQ(kernels::batch_norm_scratch(k.n, k.c, k.hw), 2 * k.c * k.segments);
  }
}

// The same on the GPU, for tessera's backwards and for cuDNN's train backward (beta = 0 for
// scratch, and a memset for the one parameter gradient of a mixed pair: cuDNN has one beta for
// both). Equal to the CPU within float32 drift.
TEST(BatchNormBackward, CudaOverwritesScratchOutputsLikeTheCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "BatchNorm backward on CUDA not run: " << reason;
#if TESSERA_CUDA
  const float nan = std::numeric_limits<float>::quiet_NaN();
  bool& use_cudnn = kernels::cuda::runtime().bn_backward_cudnn;
  const bool saved = use_cudnn;
  // Segments (kernels/batch_norm.h): the first shape has one; the second 40 of one image,
  // more than the 32 lanes that add a channel's segments in the train backward; the third 4 of
  // 16 images, the last one short (2 images).
  static_assert(kernels::kBnMinSegmentElements == 1024, "the shapes below assume it");
  for (const BnBackwardCase& k : {BnBackwardCase(3, 5, 7), BnBackwardCase(40, 3, 1024), BnBackwardCase(50, 1, 64)})
  for (bool cudnn : {false, true})
  for (bool eval : {false, true})
    for (uint32_t acc : {0u, 7u, 3u, 5u}) {
      if (cudnn && eval) continue;  // cuDNN has no eval backward
      use_cudnn = cudnn;
      const auto cpu = k.run(eval, acc, 0.0f);
      const auto gpu = k.run(eval, acc, acc == 7u ? 0.0f : nan, /*cuda=*/true);
      const char* path = eval ? "eval" : cudnn ? "train (cuDNN)" : "train";
      for (size_t o = 0; o < 3; ++o) {
        const bool added = acc & (1u << o);
        size_t bad = 0, first = 0;  // counted, so a wrong kernel reports one line, not a million
        for (size_t i = 0; i < cpu[o].size(); ++i) {
          const bool ok = added && acc != 7u
                              ? std::isnan(gpu[o][i])  // added into NaN, as asked
                              : std::fabs(gpu[o][i] - cpu[o][i]) <= 1e-4f * std::max(1.0f, std::fabs(cpu[o][i]));
          if (!ok && bad++ == 0) first = i;
        }
        EXPECT_EQ(bad, 0u) << path << " n " << k.n << " accumulate " << acc << " output " << o << ": first at ["
                           << first << "]: GPU " << gpu[o][first] << ", CPU " << cpu[o][first];
      }
    }
  use_cudnn = saved;
#endif
}

// The forwards on the GPU, cuDNN's and tessera's (TESSERA_BN_FORWARD), against the CPU: y, the
// saved mean and inverse std and the running statistics of the train forward, and the eval
// forward. Then the train output made again as batch_norm_forward_again (engine/ops_norm.cpp)
// makes it, with two eval calls, must equal the train kernel's bit for bit: the fused
// BatchNorm-ReLU-conv relies on it.
TEST(BatchNormForward, CudaMatchesTheCpuAndRemakesTheTrainOutputExactly) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "BatchNorm forward on CUDA not run: " << reason;
#if TESSERA_CUDA
  bool& use_cudnn = kernels::cuda::runtime().bn_forward_cudnn;
  const bool saved = use_cudnn;
  struct Case {
    int64_t n, c, hw;
  };
  // One segment; 40 segments of one image; 4 of 16 images, the last short; 1x1 planes (BatchNorm1d).
  for (const Case& k : {Case{3, 5, 7}, Case{40, 3, 1024}, Case{50, 1, 64}, Case{256, 6, 1}}) {
    const size_t numel = static_cast<size_t>(k.n * k.c * k.hw), nc = static_cast<size_t>(k.c);
    std::vector<float> x(numel), gamma(nc), beta(nc), rm(nc, 0.5f), rv(nc, 2.0f), mean(nc), invstd(nc), y(numel),
        y_eval(numel);
    for (size_t i = 0; i < numel; ++i) x[i] = 3.0f + std::sin(0.37f * static_cast<float>(i));  // |mean| > spread
    for (size_t ch = 0; ch < nc; ++ch) gamma[ch] = 0.5f + 0.1f * ch, beta[ch] = -0.2f * ch;
    kernels::cpu::batch_norm_forward_train(x.data(), gamma.data(), beta.data(), y.data(), rm.data(), rv.data(),
                                           mean.data(), invstd.data(), k.n, k.c, k.hw, 0.1f, 1e-5f, nullptr);
    kernels::cpu::batch_norm_forward_eval(x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), y_eval.data(),
                                          k.n, k.c, k.hw, 1e-5f);
    auto up = [](const std::vector<float>& v) {
      OwnedTensor t(Device::CUDA, Shape{static_cast<int64_t>(v.size())});
      from_host(t.t, v);
      return t;
    };
    auto near = [](const std::vector<float>& gpu, const std::vector<float>& cpu, const std::string& what) {
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < cpu.size(); ++i)
        if (!(std::fabs(gpu[i] - cpu[i]) <= 2e-4f * std::max(1.0f, std::fabs(cpu[i]))) && bad++ == 0) first = i;
      EXPECT_EQ(bad, 0u) << what << ": first at [" << first << "]: GPU " << gpu[first] << ", CPU " << cpu[first];
    };
    for (bool cudnn : {true, false}) {
      use_cudnn = cudnn;
      const std::string where = std::string(cudnn ? "cuDNN" : "tessera") + " " + std::to_string(k.n) + "x" +
                                std::to_string(k.c) + "x" + std::to_string(k.hw);
      OwnedTensor tx = up(x), tg = up(gamma), tb = up(beta), trm = up(std::vector<float>(nc, 0.5f)),
                  trv = up(std::vector<float>(nc, 2.0f)), tm(Device::CUDA, Shape{k.c}), ts(Device::CUDA, Shape{k.c}),
                  ty(Device::CUDA, Shape{static_cast<int64_t>(numel)}),
                  scratch(Device::CUDA, Shape{kernels::batch_norm_scratch(k.n, k.c, k.hw)});
      TS_DISPATCH(Device::CUDA, batch_norm_forward_train, tx.t.f32(), tg.t.f32(), tb.t.f32(), ty.t.f32(), trm.t.f32(),
                  trv.t.f32(), tm.t.f32(), ts.t.f32(), k.n, k.c, k.hw, 0.1f, 1e-5f, scratch.t.f32());
      near(to_host_f32(ty.t), y, where + " train y");
      near(to_host_f32(tm.t), mean, where + " saved mean");
      near(to_host_f32(ts.t), invstd, where + " saved invstd");
      near(to_host_f32(trm.t), rm, where + " running mean");
      near(to_host_f32(trv.t), rv, where + " running var");
      // The eval forward, with the CPU's running statistics.
      OwnedTensor crm = up(rm), crv = up(rv), te(Device::CUDA, Shape{static_cast<int64_t>(numel)});
      TS_DISPATCH(Device::CUDA, batch_norm_forward_eval, tx.t.f32(), tg.t.f32(), tb.t.f32(), crm.t.f32(), crv.t.f32(),
                  te.t.f32(), k.n, k.c, k.hw, 1e-5f);
      near(to_host_f32(te.t), y_eval, where + " eval y");
      // batch_norm_forward_again's two calls: scale = gamma invstd, then x scale + beta - mean scale.
      OwnedTensor ones = up(std::vector<float>(nc, 1.0f)), zeros = up(std::vector<float>(nc, 0.0f)),
                  scale(Device::CUDA, Shape{k.c}), again(Device::CUDA, Shape{static_cast<int64_t>(numel)});
      TS_DISPATCH(Device::CUDA, batch_norm_forward_eval, ts.t.f32(), tg.t.f32(), zeros.t.f32(), zeros.t.f32(),
                  ones.t.f32(), scale.t.f32(), int64_t{1}, k.c, int64_t{1}, 0.0f);
      TS_DISPATCH(Device::CUDA, batch_norm_forward_eval, tx.t.f32(), scale.t.f32(), tb.t.f32(), tm.t.f32(),
                  ones.t.f32(), again.t.f32(), k.n, k.c, k.hw, 0.0f);
      const std::vector<float> train_y = to_host_f32(ty.t), remade = to_host_f32(again.t);
      size_t differ = 0, first = 0;
      for (size_t i = 0; i < numel; ++i)
        if (std::memcmp(&train_y[i], &remade[i], sizeof(float)) != 0 && differ++ == 0) first = i;
      EXPECT_EQ(differ, 0u) << where << ": the remade train output differs at [" << first << "]: " << remade[first]
                            << " against the train kernel's " << train_y[first];
    }
  }
  use_cudnn = saved;
#endif
}

}  // namespace
}  // namespace tessera
