// Fused optimizers (kernels/optimizer.h, engine/optimizer.h) and the learning-rate schedules.
//
// Error budget against the plain references below and against PyTorch: the fused kernels use
// one fmaf where PyTorch rounds a multiply and an add separately, so each fused operation
// differs by at most one rounding (2^-24 relative to its largest term). A step has at most 4
// such operations per element, and the values here are O(1) with lr <= 1, so after S steps
// the difference is below about 4 S 2^-24 (|w| + 1): for S = 5 about 2.4e-6 (|w| + 1). LARS
// adds the norms' summation order (float vs the reference's double, < 1e-6 relative for
// these sizes), which scales the step, not w. The tolerance kTol = 4e-6 holds that budget;
// the differences observed against PyTorch are 1 ulp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/optimizer.h"
#include "engine/schedule.h"
#include "kernels/common/philox.h"
#include "tests/op_case.h"

namespace tessera {
namespace {

constexpr float kTol = 4e-6f;

ParamTable net_table() {
  ParamTable t;
  t.add("conv1.weight", Shape{8, 3, 3, 3}, ParamKind::ConvWeight);
  t.add("bn1.weight", Shape{8}, ParamKind::BnWeight);
  t.add("bn1.bias", Shape{8}, ParamKind::BnBias);
  t.add("fc.weight", Shape{10, 8}, ParamKind::LinearWeight);
  t.add("fc.bias", Shape{10}, ParamKind::Bias);
  t.add("big.weight", Shape{3, 3001}, ParamKind::LinearWeight);  // several chunks
  return t;
}

std::vector<float> random_values(const ParamTable& t, uint64_t seed, float scale) {
  std::vector<float> v(static_cast<size_t>(t.arena_numel()), 0.0f);
  for (const Slot& s : t.slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i)
      v[static_cast<size_t>(i)] =
          scale * (2.0f * kernels::philox_uniform(seed, kernels::kStreamTest, 1, static_cast<uint64_t>(i)) - 1.0f);
  return v;
}

bool excluded_kind(ParamKind k) { return !is_weight_matrix(k); }

// Plain per-tensor references, written the way PyTorch / solo-learn compute them (the
// compiler may fuse some multiply-adds here; the budget covers either rounding), norms in
// double.
struct Reference {
  const ParamTable& t;
  OptimizerConfig c;
  std::vector<float> w, buf, m, v;
  int64_t steps = 0;

  void step(const std::vector<float>& g, float lr) {
    ++steps;
    for (const Slot& s : t.slots()) {
      const bool ex = c.exclude_bias_and_norm && excluded_kind(s.kind);
      const float wd = ex ? 0.0f : c.weight_decay;
      double ww = 0, gg = 0;
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
        ww += double(w[size_t(i)]) * w[size_t(i)];
        gg += double(g[size_t(i)]) * g[size_t(i)];
      }
      const float wn = float(std::sqrt(ww)), gn = float(std::sqrt(gg));
      const bool adapt = c.kind == OptimizerKind::Lars && !ex && wn != 0 && gn != 0;
      const float trust = adapt ? c.eta * wn / (gn + wn * wd + c.lars_eps) : 1.0f;
      const double bc1 = 1 - std::pow(double(c.beta1), double(steps)), bc2 = 1 - std::pow(double(c.beta2), double(steps));
      for (int64_t j = s.offset; j < s.offset + s.numel; ++j) {
        const size_t i = size_t(j);
        if (c.kind == OptimizerKind::AdamW) {
          w[i] = w[i] * (1.0f - lr * wd);
          m[i] = m[i] * c.beta1 + (1.0f - c.beta1) * g[i];
          v[i] = v[i] * c.beta2 + (1.0f - c.beta2) * (g[i] * g[i]);
          const float denom = std::sqrt(v[i]) / float(std::sqrt(bc2)) + c.adam_eps;
          w[i] = w[i] - float(lr / bc1) * (m[i] / denom);
          continue;
        }
        float d = g[i];
        if (c.kind == OptimizerKind::Sgd) d = d + wd * w[i];
        if (adapt) d = (d + wd * w[i]) * trust;
        buf[i] = c.momentum * buf[i] + d;
        const float st = c.nesterov ? d + c.momentum * buf[i] : buf[i];
        w[i] = w[i] - lr * st;
      }
    }
  }
};

void expect_close(const ParamTable& t, const std::vector<float>& want, const std::vector<float>& got, const char* what) {
  for (const Slot& s : t.slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
      const float a = want[size_t(i)], b = got[size_t(i)];
      ASSERT_LE(std::fabs(a - b), kTol * (1.0f + std::fabs(a)))
          << what << ": " << s.name << "[" << i - s.offset << "] reference " << a << " fused " << b;
    }
}

OptimizerConfig config_for(OptimizerKind k) {
  OptimizerConfig c;
  c.kind = k;
  c.weight_decay = k == OptimizerKind::AdamW ? 0.05f : 5e-4f;
  return c;
}

struct Net {
  ParamTable t = net_table();
  Arena w, g;
  explicit Net(Device d = Device::CPU) : w(t, d), g(t, d) {
    from_host(w.all(), random_values(t, 1, 1.0f));
    w.write_canaries();
    g.write_canaries();
  }
  void set_grads(uint64_t seed) {
    from_host(g.all(), random_values(t, seed, 0.1f));
    g.write_canaries();
  }
};

class OptimizerVsReference : public ::testing::TestWithParam<std::pair<OptimizerKind, bool>> {};

TEST_P(OptimizerVsReference, FiveStepsMatchThePerTensorReference) {
  const auto [kind, nesterov] = GetParam();
  Net s;
  OptimizerConfig c = config_for(kind);
  c.nesterov = nesterov;
  Optimizer opt(s.t, Device::CPU, c);
  Reference ref{s.t, c, to_host_f32(s.w.all()), {}, {}, {}, 0};
  ref.buf = ref.m = ref.v = std::vector<float>(ref.w.size(), 0.0f);
  for (int k = 0; k < 5; ++k) {
    s.set_grads(10 + uint64_t(k));
    const float lr = kind == OptimizerKind::AdamW ? 1e-2f : 0.1f * float(k + 1);
    opt.step(s.w, s.g, lr);
    ref.step(to_host_f32(s.g.all()), lr);
  }
  expect_close(s.t, ref.w, to_host_f32(s.w.all()), optimizer_name(kind));
  EXPECT_TRUE(s.w.broken_canaries().empty()) << s.w.broken_canaries()[0];
  for (auto& [name, arena] : opt.state_arenas()) {
    EXPECT_TRUE(arena->table().same_layout(s.t)) << name;
  }
  EXPECT_EQ(opt.steps(), 5);
}

INSTANTIATE_TEST_SUITE_P(Kinds, OptimizerVsReference,
                         ::testing::Values(std::pair{OptimizerKind::Sgd, false}, std::pair{OptimizerKind::Sgd, true},
                                           std::pair{OptimizerKind::Lars, false}, std::pair{OptimizerKind::Lars, true},
                                           std::pair{OptimizerKind::AdamW, false}),
                         [](const auto& info) {
                           return std::string(optimizer_name(info.param.first)) + (info.param.second ? "_nesterov" : "");
                         });

// With zero gradients only weight decay moves a parameter: conv and linear weights shrink,
// biases and BN parameters stay exactly as they were; without the exclusion they shrink too.
TEST(Optimizer, WeightDecayExcludesBiasAndNorm) {
  for (bool exclude : {true, false}) {
    for (OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::AdamW}) {
      Net s;
      fill_zero(s.g.all());
      OptimizerConfig c = config_for(kind);
      c.weight_decay = 0.1f;
      c.exclude_bias_and_norm = exclude;
      Optimizer opt(s.t, Device::CPU, c);
      const std::vector<float> before = to_host_f32(s.w.all());
      opt.step(s.w, s.g, 0.5f);
      const std::vector<float> after = to_host_f32(s.w.all());
      for (size_t k = 0; k < s.t.size(); ++k) {
        const Slot& sl = s.t[k];
        EXPECT_EQ(opt.excluded(k), exclude && excluded_kind(sl.kind)) << sl.name;
        const size_t i = size_t(sl.offset);
        if (opt.excluded(k))
          EXPECT_EQ(after[i], before[i]) << optimizer_name(kind) << " decayed excluded " << sl.name;
        else
          EXPECT_NEAR(after[i], before[i] * (1.0f - 0.5f * 0.1f), 1e-6f) << optimizer_name(kind) << " " << sl.name;
      }
    }
  }
}

// LARS: an adapted tensor's step is scaled by its trust ratio, an excluded one is plain SGD.
TEST(Optimizer, LarsAdaptsWeightsOnly) {
  Net s;
  s.set_grads(3);
  OptimizerConfig c = config_for(OptimizerKind::Lars);
  c.momentum = 0.0f;
  c.weight_decay = 0.0f;
  Optimizer opt(s.t, Device::CPU, c);
  const std::vector<float> w0 = to_host_f32(s.w.all()), g = to_host_f32(s.g.all());
  opt.step(s.w, s.g, 1.0f);
  const std::vector<float> w1 = to_host_f32(s.w.all());
  for (const Slot& sl : s.t.slots()) {
    double ww = 0, gg = 0;
    for (int64_t i = sl.offset; i < sl.offset + sl.numel; ++i) {
      ww += double(w0[size_t(i)]) * w0[size_t(i)];
      gg += double(g[size_t(i)]) * g[size_t(i)];
    }
    const double trust = excluded_kind(sl.kind) ? 1.0 : 0.02 * std::sqrt(ww) / std::sqrt(gg);
    const size_t i = size_t(sl.offset);
    EXPECT_NEAR((w0[i] - w1[i]) / g[i], trust, 1e-4 * trust) << sl.name;
  }
}

// PyTorch's own numbers (tests/oracles/optimizers_torch.py): (2, 3) weight, (2) bias, 3 steps.
ParamTable tiny_table() {
  ParamTable t;
  t.add("fc.weight", Shape{2, 3}, ParamKind::LinearWeight);
  t.add("fc.bias", Shape{2}, ParamKind::Bias);
  return t;
}

std::vector<float> run_tiny(OptimizerConfig c, float lr) {
  ParamTable t = tiny_table();
  Arena w(t, Device::CPU), g(t, Device::CPU);
  std::vector<float> hw = to_host_f32(w.all());
  for (int i = 0; i < 6; ++i) hw[size_t(t[0].offset + i)] = float(0.1 * (i + 1) * (i % 2 ? -1 : 1));
  for (int j = 0; j < 2; ++j) hw[size_t(t[1].offset + j)] = float(0.05 * (j + 1));
  from_host(w.all(), hw);
  Optimizer opt(t, Device::CPU, c);
  for (int k = 0; k < 3; ++k) {
    std::vector<float> hg = to_host_f32(g.all());
    for (int i = 0; i < 6; ++i) hg[size_t(t[0].offset + i)] = float(0.01 * (i - 2.5) + 0.02 * k * (i % 2 ? -1 : 1));
    for (int j = 0; j < 2; ++j) hg[size_t(t[1].offset + j)] = float(0.03 * (j + 1) - 0.01 * k);
    from_host(g.all(), hg);
    opt.step(w, g, lr);
  }
  std::vector<float> out = to_host_f32(w.all()), packed;
  for (const Slot& s : t.slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) packed.push_back(out[size_t(i)]);
  return packed;
}

TEST(TorchOracle, SgdAdamWAndSoloLearnLars) {
  const std::vector<float> kTorchSgd = {0.107060887f, -0.174827427f, 0.29088378f, -0.39084357f,
                                        0.47470668f,  -0.606859684f, 0.0323630013f, 0.0582159981f};
  const std::vector<float> kTorchAdamW = {0.119973592f, -0.170814022f, 0.29720661f,   -0.397056669f,
                                          0.470364213f, -0.619223952f, 0.0213602837f, 0.0703561231f};
  const std::vector<float> kSoloLars = {0.115563668f, -0.173504934f, 0.29451856f,    -0.394508034f,
                                        0.4734734f,   -0.615511119f, -0.0146499984f, -0.0487999991f};
  OptimizerConfig sgd = config_for(OptimizerKind::Sgd);
  sgd.nesterov = true;
  OptimizerConfig adamw = config_for(OptimizerKind::AdamW);
  // solo-learn's clip_lr at lr 0.1, where the weight's trust ratio (about 0.5) is clipped.
  const std::vector<float> kSoloLarsClip = {0.106219284f, -0.18377386f, 0.294988185f, -0.394982576f,
                                            0.483757049f, -0.606191278f, 0.0370700024f, 0.0702400059f};
  OptimizerConfig lars = config_for(OptimizerKind::Lars);
  lars.weight_decay = 1e-4f;
  OptimizerConfig lars_clip = lars;
  lars_clip.lars_clip_lr = true;
  const std::pair<const char*, std::pair<std::vector<float>, std::vector<float>>> cases[] = {
      {"sgd", {kTorchSgd, run_tiny(sgd, 0.1f)}},
      {"adamw", {kTorchAdamW, run_tiny(adamw, 0.01f)}},
      {"lars", {kSoloLars, run_tiny(lars, 0.5f)}},
      {"lars clip_lr", {kSoloLarsClip, run_tiny(lars_clip, 0.1f)}}};
  for (const auto& [name, pair] : cases)
    for (size_t i = 0; i < pair.first.size(); ++i)
      EXPECT_NEAR(pair.second[i], pair.first[i], kTol * (1.0f + std::fabs(pair.first[i])))
          << name << " element " << i;
}

// Resume: 2 steps, save state arenas and strings, restore into a fresh optimizer, 2 more
// steps: bit-identical to 4 uninterrupted steps (AdamW needs the step count for its bias
// corrections).
TEST(Optimizer, ResumeIsBitIdentical) {
  for (OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::Lars, OptimizerKind::AdamW}) {
    Net a, b;
    Optimizer oa(a.t, Device::CPU, config_for(kind));
    for (int k = 0; k < 4; ++k) {
      a.set_grads(20 + uint64_t(k));
      oa.step(a.w, a.g, 0.05f);
    }
    std::map<std::string, std::string> saved;
    std::vector<std::vector<float>> saved_arenas;
    {
      Optimizer ob(b.t, Device::CPU, config_for(kind));
      for (int k = 0; k < 2; ++k) {
        b.set_grads(20 + uint64_t(k));
        ob.step(b.w, b.g, 0.05f);
      }
      saved = ob.state_strings();
      for (auto& [name, arena] : ob.state_arenas()) saved_arenas.push_back(to_host_f32(arena->all()));
    }
    Optimizer oc(b.t, Device::CPU, config_for(kind));
    oc.restore_state_strings(saved);
    size_t n = 0;
    for (auto& [name, arena] : oc.state_arenas()) from_host(arena->all(), saved_arenas[n++]);
    for (int k = 2; k < 4; ++k) {
      b.set_grads(20 + uint64_t(k));
      oc.step(b.w, b.g, 0.05f);
    }
    const std::vector<float> x = to_host_f32(a.w.all()), y = to_host_f32(b.w.all());
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float))) << optimizer_name(kind);
  }
  Net s;
  Optimizer o(s.t, Device::CPU, config_for(OptimizerKind::Sgd));
  EXPECT_THROW(o.restore_state_strings({{"optim.kind", "adamw"}, {"optim.steps", "3"}}), Error);
  EXPECT_THROW(o.restore_state_strings({{"optim.kind", "sgd"}, {"optim.steps", "-3"}}), Error);
  EXPECT_THROW(parse_optimizer("adam"), UsageError);
}

TEST(Schedule, WarmupCosine) {
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, 0, 10, 110), 0.1f);
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, 9, 10, 110), 1.0f);
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, 10, 10, 110), 1.0f);
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, 60, 10, 110), 0.5f);
  EXPECT_NEAR(warmup_cosine_lr(1.0f, 110, 10, 110), 0.0f, 1e-7f);
  EXPECT_FLOAT_EQ(warmup_cosine_lr(2.0f, 60, 0, 100, 1.0f), 1.5f + 0.5f * float(std::cos(0.6 * M_PI)));
  EXPECT_THROW(warmup_cosine_lr(1.0f, 0, 10, 10), Error);
}

TEST(Schedule, FixMatchCosine) {
  EXPECT_FLOAT_EQ(fixmatch_lr(0.03f, 0, 1 << 20), 0.03f);
  EXPECT_FLOAT_EQ(fixmatch_lr(0.03f, 1 << 20, 1 << 20), float(0.03 * std::cos(7 * M_PI / 16)));
  EXPECT_FLOAT_EQ(fixmatch_lr(0.03f, 1 << 19, 1 << 20), float(0.03 * std::cos(7 * M_PI / 32)));
}

// Steps outside [0, K] are clamped (engine/schedule.h): before step 0 the schedule gives its
// step-0 value, past K its value at K. Expected values from the formulas there: warm-up step 0
// is base / W = 0.1; at K the cosine is at final_lr; FixMatch at K is base cos(7 pi / 16).
TEST(Schedule, StepsOutsideTheScheduleAreClamped) {
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, -5, 10, 110), 0.1f);
  EXPECT_FLOAT_EQ(warmup_cosine_lr(1.0f, 150, 10, 110, 0.25f), 0.25f);
  EXPECT_FLOAT_EQ(fixmatch_lr(0.03f, -100, 100), 0.03f);
  EXPECT_FLOAT_EQ(fixmatch_lr(0.03f, 300, 100), float(0.03 * std::cos(7 * M_PI / 16)));
}

// LARS sums each slot's norms over its chunks first_chunk .. first_chunk + num_chunks - 1.
// Here the first slot (offset 0) spans three chunks, so its first chunk is chunk 0: the trust
// ratio must be eta ||w|| / ||g|| over the whole tensor (as in LarsAdaptsWeightsOnly: momentum
// and weight decay 0, lr 1, so w0 - w1 = trust * g), checked in every chunk of it.
TEST(Optimizer, LarsNormsCoverEveryChunkOfAFirstSlotThatSpansSeveral) {
  ParamTable t;
  t.add("big.weight", Shape{3, 3001}, ParamKind::LinearWeight);  // 9003 elements: chunks of 4096
  t.add("fc.bias", Shape{10}, ParamKind::Bias);
  Arena w(t, Device::CPU), g(t, Device::CPU);
  from_host(w.all(), random_values(t, 1, 1.0f));
  from_host(g.all(), random_values(t, 5, 0.1f));
  OptimizerConfig c = config_for(OptimizerKind::Lars);
  c.momentum = 0.0f;
  c.weight_decay = 0.0f;
  Optimizer opt(t, Device::CPU, c);
  const std::vector<float> w0 = to_host_f32(w.all()), gh = to_host_f32(g.all());
  opt.step(w, g, 1.0f);
  const std::vector<float> w1 = to_host_f32(w.all());
  const Slot& big = t[0];
  ASSERT_EQ(big.offset, 0);
  double ww = 0, gg = 0;
  for (int64_t i = big.offset; i < big.offset + big.numel; ++i) {
    ww += double(w0[size_t(i)]) * w0[size_t(i)];
    gg += double(gh[size_t(i)]) * gh[size_t(i)];
  }
  const double trust = 0.02 * std::sqrt(ww) / std::sqrt(gg);
  for (int64_t e : {int64_t{0}, int64_t{5000}, int64_t{9002}}) {
    const size_t i = size_t(big.offset + e);
    EXPECT_NEAR((w0[i] - w1[i]) / gh[i], trust, 1e-4 * trust) << "big.weight[" << e << "]";
  }
}

// Hyper-parameters outside their ranges are usage errors; the ends of the ranges are valid.
// A learning rate of 0 is a step (warmup_cosine_lr reaches final_lr = 0 at K): it leaves the
// weights as they were; a negative one is refused.
TEST(Optimizer, OutOfRangeSettingsAreRefusedAndLrZeroIsAStep) {
  const ParamTable t = net_table();
  const auto with = [](OptimizerKind k, auto change) {
    OptimizerConfig c = config_for(k);
    change(c);
    return c;
  };
  EXPECT_THROW(Optimizer(t, Device::CPU, with(OptimizerKind::Sgd, [](OptimizerConfig& c) { c.momentum = 1.0f; })),
               UsageError);
  EXPECT_THROW(Optimizer(t, Device::CPU, with(OptimizerKind::Sgd, [](OptimizerConfig& c) {
                           c.momentum = 0.0f;
                           c.nesterov = true;
                         })),
               UsageError);
  EXPECT_THROW(Optimizer(t, Device::CPU, with(OptimizerKind::Lars, [](OptimizerConfig& c) { c.eta = 0.0f; })),
               UsageError);
  EXPECT_THROW(Optimizer(t, Device::CPU, with(OptimizerKind::AdamW, [](OptimizerConfig& c) { c.beta2 = 1.0f; })),
               UsageError);
  EXPECT_NO_THROW(Optimizer(t, Device::CPU, with(OptimizerKind::Sgd, [](OptimizerConfig& c) { c.momentum = 0.0f; })));
  for (OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::Lars, OptimizerKind::AdamW}) {
    Net s;
    s.set_grads(7);
    Optimizer opt(s.t, Device::CPU, config_for(kind));
    const std::vector<float> before = to_host_f32(s.w.all());
    EXPECT_THROW(opt.step(s.w, s.g, -0.1f), Error) << optimizer_name(kind);
    ASSERT_NO_THROW(opt.step(s.w, s.g, 0.0f)) << optimizer_name(kind);
    const std::vector<float> after = to_host_f32(s.w.all());
    EXPECT_EQ(0, std::memcmp(before.data(), after.data(), before.size() * sizeof(float))) << optimizer_name(kind);
  }
}

// GPU: the CUDA steps against the CPU reference. SGD and AdamW share every rounding (fmaf,
// correctly rounded sqrt and division): bit-identical. So does LARS: the CPU sums its norms in
// the CUDA kernels' order (kernels/common/optimizer_rules.h).
TEST(OptimizerCuda, MatchesCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA vs CPU optimizers not run: " << reason;
  for (int variant = 0; variant < 4; ++variant) {
    const OptimizerKind kind = variant == 0 ? OptimizerKind::Sgd : variant == 3 ? OptimizerKind::AdamW : OptimizerKind::Lars;
    OptimizerConfig c = config_for(kind);
    c.nesterov = kind != OptimizerKind::AdamW;
    c.lars_clip_lr = variant == 2;
    SCOPED_TRACE(c.lars_clip_lr ? "lars clip_lr" : optimizer_name(kind));
    Net cpu, gpu(Device::CUDA);
    Optimizer ocpu(cpu.t, Device::CPU, c), ogpu(gpu.t, Device::CUDA, c);
    for (int k = 0; k < 3; ++k) {
      cpu.set_grads(30 + uint64_t(k));
      gpu.set_grads(30 + uint64_t(k));
      ocpu.step(cpu.w, cpu.g, 0.1f);
      ogpu.step(gpu.w, gpu.g, 0.1f);
    }
    const std::vector<float> want = to_host_f32(cpu.w.all()), got = to_host_f32(gpu.w.all());
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float))) << optimizer_name(kind);
    EXPECT_TRUE(gpu.w.broken_canaries().empty()) << optimizer_name(kind);
  }
}

}  // namespace
}  // namespace tessera
