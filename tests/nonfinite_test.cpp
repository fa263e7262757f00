// Non-finite values in a training step (kernels/nonfinite.h, engine/nonfinite.h,
// apps/run/nonfinite.h):
//
//   kernel     the CPU reference finds NaN, +inf and -inf and nothing else (not FLT_MAX, not
//              denormals, not -0), reports the lowest tensor id, and commit() keeps the
//              first bad step while `skip` follows each step; CUDA agrees (skipped, with the
//              reason, without a GPU)
//   monitor    names the loss or the gradient slot, by the arena's slot table
//   skip       an optimizer, a teacher update and the MoCo enqueue given a set flag leave
//              every weight and state element bit for bit as it was; a cleared flag does not
//   ops        --nonfinite-check ops names the first op, in execution order, that went non-finite
//   guard      the programs' policy, test hook, restore and ring (apps/run/nonfinite.h)
// The programs themselves with a NaN injected: tests/nonfinite_programs_test.cpp.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>
#include <vector>

#include "apps/run/nonfinite.h"
#include "engine/arena.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/dispatch.h"
#include "engine/nonfinite.h"
#include "engine/ops.h"
#include "engine/optimizer.h"
#include "engine/profile.h"
#include "engine/slot_tables.h"
#include "engine/teacher.h"
#include "kernels/nonfinite.h"
#include "tests/op_case.h"
#include "tests/program_runs.h"
#include "tests/thrown.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- the kernel -------------------------------------------------------------------------

TEST(NonfiniteKernel, FindsNanAndInfinitiesOnly) {
  const std::vector<float> finite = {0.0f, -0.0f, 1.0f, -FLT_MAX, FLT_MAX, FLT_MIN, 1e-45f, -1e-45f};
  kernels::NonfiniteRecord r = kernels::nonfinite_record_init();
  kernels::cpu::nonfinite_check(finite.data(), static_cast<int64_t>(finite.size()), 3, &r);
  EXPECT_EQ(r.step_tensor, kernels::kNonfiniteNone);
  for (float bad : {kNaN, -kNaN, kInf, -kInf}) {
    std::vector<float> x = finite;
    x[5] = bad;
    kernels::NonfiniteRecord s = kernels::nonfinite_record_init();
    kernels::cpu::nonfinite_check(x.data(), static_cast<int64_t>(x.size()), 3, &s);
    EXPECT_EQ(s.step_tensor, 3) << bad;
  }
}

// A table of three slots; the arena's chunks of 4 elements cut the first slot in several.
struct Three {
  ParamTable t;
  Three() {
    t.add("a.weight", Shape{2, 9}, ParamKind::LinearWeight);
    t.add("a.bias", Shape{2}, ParamKind::Bias);
    t.add("b.weight", Shape{3, 5}, ParamKind::LinearWeight);
  }
};

TEST(NonfiniteKernel, LowestIdWinsAndCommitKeepsTheFirstStep) {
  Three three;
  const std::vector<kernels::ArenaChunk> chunks = arena_chunks(three.t, 4);
  std::vector<float> x(static_cast<size_t>(three.t.arena_numel()), 0.5f);
  kernels::NonfiniteRecord r = kernels::nonfinite_record_init();
  auto check = [&](int64_t step) {
    kernels::cpu::nonfinite_check_arena(chunks.data(), static_cast<int64_t>(chunks.size()), x.data(), 10, &r);
    kernels::cpu::nonfinite_commit(&r, step);
  };
  check(0);
  EXPECT_EQ(r.skip, 0);
  EXPECT_EQ(r.first_step, -1);
  x[static_cast<size_t>(three.t[2].offset + 7)] = kInf;   // b.weight: id 12
  x[static_cast<size_t>(three.t[1].offset + 1)] = -kNaN;  // a.bias: id 11, the lower
  check(1);
  EXPECT_EQ(r.skip, 1);
  EXPECT_EQ(r.first_step, 1);
  EXPECT_EQ(r.first_tensor, 11);
  EXPECT_EQ(r.bad_steps, 1);
  EXPECT_EQ(r.step_tensor, kernels::kNonfiniteNone);  // reset for the next step
  x[static_cast<size_t>(three.t[1].offset + 1)] = 1.0f;
  check(2);  // b.weight still infinite: skipped, but the first finding stays
  EXPECT_EQ(r.skip, 1);
  EXPECT_EQ(r.first_step, 1);
  EXPECT_EQ(r.first_tensor, 11);
  EXPECT_EQ(r.bad_steps, 2);
  x[static_cast<size_t>(three.t[2].offset + 7)] = 1.0f;
  check(3);
  EXPECT_EQ(r.skip, 0);
  EXPECT_EQ(r.bad_steps, 2);
}

// Gaps between slots are never read: a NaN canary there is not a finding.
TEST(NonfiniteKernel, IgnoresArenaGaps) {
  Three three;
  Arena a(three.t, Device::CPU);
  a.write_canaries();  // quiet NaNs in every gap
  NonfiniteMonitor m(Device::CPU);
  m.watch_gradients("", a);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  m.check_step(0, loss.t);
  EXPECT_EQ(m.read().first_step, -1);
}

// nonfinite_check_op (--nonfinite-check ops) on `d`: four op outputs checked out of order,
// numbers 1 and 3 holding `bad`, number 0 a large finite value; the record's step_op.
int32_t first_bad_op(Device d, float bad) {
  const OwnedTensor record(d, Shape{static_cast<int64_t>((sizeof(kernels::NonfiniteRecord) + 3) / 4)});
  const kernels::NonfiniteRecord init = kernels::nonfinite_record_init();
  copy_from_host(record.t, &init, sizeof init);
  auto* rec = reinterpret_cast<kernels::NonfiniteRecord*>(record.t.f32());
  for (const int32_t seq : {3, 0, 2, 1}) {
    std::vector<float> v(1000, 1.0f);
    if (seq == 0) v[999] = FLT_MAX;
    if (seq == 1 || seq == 3) v[static_cast<size_t>(300 * seq)] = bad;
    const OwnedTensor t(d, Shape{1000});
    copy_from_host(t.t, v.data(), v.size() * sizeof(float));
    TS_DISPATCH(d, nonfinite_check_op, t.t.f32(), t.t.numel(), seq, rec);
  }
  kernels::NonfiniteRecord out{};
  copy_to_host(&out, record.t, sizeof out);
  return out.step_op;
}

// The lowest sequence number of a bad op output wins, whatever the order of the checks.
TEST(NonfiniteCheck, OpsLowestBadSequenceNumberWins) {
  for (float bad : {kNaN, kInf, -kInf}) EXPECT_EQ(first_bad_op(Device::CPU, bad), 1) << bad;
}

TEST(NonfiniteCuda, MatchesCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA vs CPU non-finite check not run: " << reason;
  Three three;
  for (int bad_slot = -1; bad_slot < 3; ++bad_slot) {
    for (float bad : {kNaN, kInf, -kInf}) {
      kernels::NonfiniteRecord want{}, got{};
      for (Device d : {Device::CPU, Device::CUDA}) {
        Arena g(three.t, d);
        if (bad_slot >= 0) {
          const Tensor s = g.slot(static_cast<size_t>(bad_slot));
          std::vector<float> v(static_cast<size_t>(s.numel()), 2.0f);
          v.back() = bad;
          copy_from_host(s, v.data(), v.size() * sizeof(float));
        }
        const OwnedTensor loss(d, Shape{4});
        const std::vector<float> l = {1, 2, 3, bad_slot == 0 ? bad : 4.0f};
        copy_from_host(loss.t, l.data(), l.size() * sizeof(float));
        NonfiniteMonitor m(d);
        m.watch_gradients("x.", g);
        m.check_step(5, loss.t);
        m.check_step(6, loss.t);
        (d == Device::CPU ? want : got) = m.read();
      }
      EXPECT_EQ(got.first_step, want.first_step) << bad_slot << " " << bad;
      EXPECT_EQ(got.first_tensor, want.first_tensor) << bad_slot << " " << bad;
      EXPECT_EQ(got.bad_steps, want.bad_steps) << bad_slot << " " << bad;
      EXPECT_EQ(got.skip, want.skip) << bad_slot << " " << bad;
      for (int32_t b = 0; b < want.bad_steps; ++b) EXPECT_EQ(got.bad_step_ring[b], want.bad_step_ring[b]) << b;
    }
  }
  // nonfinite_check_op, which no program run in the suite reaches on a GPU.
  for (float bad : {kNaN, kInf, -kInf}) EXPECT_EQ(first_bad_op(Device::CUDA, bad), 1) << bad;
}

// ---- the monitor ------------------------------------------------------------------------

TEST(NonfiniteMonitor, NamesTheLossOrTheGradientSlot) {
  Three one, two;
  Arena g1(one.t, Device::CPU), g2(two.t, Device::CPU);
  NonfiniteMonitor m(Device::CPU);
  m.watch_gradients("backbone.", g1);
  m.watch_gradients("head.", g2);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  m.check_step(0, loss.t);
  EXPECT_EQ(m.read().first_step, -1);
  m.poison_at(1, "head.a.bias");
  m.check_step(1, loss.t);
  kernels::NonfiniteRecord r = m.read();
  EXPECT_EQ(r.first_step, 1);
  EXPECT_EQ(m.describe(r.first_tensor), "the gradient of 'head.a.bias'");
  EXPECT_TRUE(std::isnan(g2.slot(1).f32()[0]));
  NonfiniteMonitor m2(Device::CPU);
  m2.watch_gradients("backbone.", g1);
  m2.poison_at(3, "loss");
  m2.check_step(3, loss.t);
  r = m2.read();
  EXPECT_EQ(r.first_step, 3);
  EXPECT_EQ(m2.describe(r.first_tensor), "the loss");
  m2.poison_at(4, "no.such.tensor");
  EXPECT_THROW(m2.check_step(4, loss.t), Error);
}

// Two arenas with the same slot names under different prefixes: a hook for the first one's
// slot poisons that slot, not the second one's of the same name.
TEST(NonfiniteMonitor, HookFindsTheSlotUnderItsOwnPrefix) {
  Three one, two;
  Arena g1(one.t, Device::CPU), g2(two.t, Device::CPU);
  fill_zero(g1.all());
  fill_zero(g2.all());
  NonfiniteMonitor m(Device::CPU);
  m.watch_gradients("x.", g1);
  m.watch_gradients("y.", g2);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  m.poison_at(0, "x.a.bias");
  m.check_step(0, loss.t);
  EXPECT_EQ(m.describe(m.read().first_tensor), "the gradient of 'x.a.bias'");
  EXPECT_TRUE(std::isnan(g1.slot(1).f32()[0]));
  EXPECT_FALSE(std::isnan(g2.slot(1).f32()[0]));
}

// Ids and op numbers outside what the monitor knows are named plainly, never read past the
// tables: ids 1-3 are the first arena's three slots, 4-6 the second's, 7 nothing.
TEST(NonfiniteMonitor, UnknownIdsAndOpsAreNamedPlainly) {
  Three one, two;
  Arena g1(one.t, Device::CPU), g2(two.t, Device::CPU);
  NonfiniteMonitor m(Device::CPU);
  m.watch_gradients("x.", g1);
  m.watch_gradients("y.", g2);
  EXPECT_EQ(m.describe(0), "the loss");
  EXPECT_EQ(m.describe(1), "the gradient of 'x.a.weight'");
  EXPECT_EQ(m.describe(3), "the gradient of 'x.b.weight'");
  EXPECT_EQ(m.describe(4), "the gradient of 'y.a.weight'");
  EXPECT_EQ(m.describe(6), "the gradient of 'y.b.weight'");
  EXPECT_EQ(m.describe(7), "tensor 7");
  EXPECT_EQ(m.describe(-1), "tensor -1");
  EXPECT_EQ(m.describe_op(-1), "op -1");
  EXPECT_EQ(m.describe_op(0), "op 0");  // no step checked with check_ops: no op known
}

TEST(NonfiniteMonitor, RefusesALossThatIsNotF32OnItsDevice) {
  NonfiniteMonitor m(Device::CPU);
  const OwnedTensor loss(Device::CPU, Shape{1}, DType::I32);
  try {
    m.check_step(0, loss.t);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "non-finite check: expected an f32 loss on cpu, found i32(1) on cpu");
  }
}

// The steps of the run before are restored into a monitor that has counted none; once it has
// read its own, a restore would mix the two lists and is refused.
TEST(NonfiniteMonitor, RestoresBadStepsOnlyBeforeCounting) {
  NonfiniteMonitor m(Device::CPU);
  m.restore_bad_steps({5, 1});
  EXPECT_EQ(m.bad_steps(), (std::vector<int64_t>{1, 5}));
  EXPECT_THROW(m.restore_bad_steps({2}), Error);
  NonfiniteMonitor counted(Device::CPU);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_value(loss.t, kNaN);
  counted.check_step(0, loss.t);
  EXPECT_EQ(counted.bad_steps(), std::vector<int64_t>{0});
  EXPECT_THROW(counted.restore_bad_steps({2}), Error);
}

TEST(NonfiniteGuard, StopThrowsNamingStepTensorAndCheckpoint) {
  Three three;
  Arena g(three.t, Device::CPU);
  NonfiniteGuard guard("stop", Device::CPU);
  EXPECT_EQ(guard.skip_flag(), nullptr);  // stop mode never skips: the run ends instead
  guard.monitor().watch_gradients("", g);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  guard.monitor().check_step(0, loss.t);
  EXPECT_EQ(guard.read("NOTE"), 0);
  g.slot(2).f32()[4] = kNaN;
  guard.monitor().check_step(1, loss.t);
  try {
    guard.read("the last checkpoint, D/last.safetensors, holds step 1");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("step 1: the gradient of 'b.weight' is not finite"), std::string::npos) << m;
    EXPECT_NE(m.find("holds step 1"), std::string::npos) << m;
  }
  EXPECT_THROW(NonfiniteGuard("sometimes", Device::CPU), UsageError);
}

// ---- skip: the updates read the flag ----------------------------------------------------

std::vector<float> host(const Arena& a) {
  const float* p = a.data();
  return std::vector<float>(p, p + a.table().arena_numel());
}

void fill(Arena& a, float base) {
  for (int64_t i = 0; i < a.table().arena_numel(); ++i) a.data()[i] = base + 0.01f * static_cast<float>(i % 17);
}

TEST(NonfiniteSkip, OptimizersLeaveWeightsAndStateUntouched) {
  Three three;
  for (OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::Lars, OptimizerKind::AdamW}) {
    OptimizerConfig c;
    c.kind = kind;
    c.weight_decay = 0.1f;
    Optimizer opt(three.t, Device::CPU, c);
    Arena w(three.t, Device::CPU), g(three.t, Device::CPU);
    fill(w, 1.0f);
    fill(g, 0.5f);
    opt.step(w, g, 0.1f);  // non-zero momentum / moments
    int32_t flag = 1;
    opt.skip_when(&flag);
    const std::vector<float> w0 = host(w);
    std::vector<std::vector<float>> s0;
    for (auto& [name, a] : opt.state_arenas()) s0.push_back(host(*a));
    g.data()[3] = kNaN;
    opt.step(w, g, 0.1f);
    EXPECT_EQ(host(w), w0) << optimizer_name(kind);
    size_t k = 0;
    for (auto& [name, a] : opt.state_arenas()) EXPECT_EQ(host(*a), s0[k++]) << optimizer_name(kind) << " " << name;
    flag = 0;  // the next good step applies
    g.data()[3] = 0.5f;
    opt.step(w, g, 0.1f);
    EXPECT_NE(host(w), w0) << optimizer_name(kind);
  }
}

TEST(NonfiniteSkip, TeacherUpdateAndEnqueueLeaveTheirStateUntouched) {
  Three three;
  ParamTable no_buffers;
  TeacherConfig c;
  c.mode = SmoothingMode::Tma;
  c.momentum = 0.9f;
  c.schedule = MomentumSchedule::Constant;
  TeacherSmoother sm(three.t, no_buffers, Device::CPU, c);
  Arena student(three.t, Device::CPU), teacher(three.t, Device::CPU), sb(no_buffers, Device::CPU),
      tb(no_buffers, Device::CPU);
  fill(student, 1.0f);
  fill(teacher, 2.0f);
  int32_t flag = 1;
  sm.skip_when(&flag);
  const std::vector<float> t0 = host(teacher);
  sm.update(student, teacher, sb, tb, 0);
  EXPECT_EQ(host(teacher), t0);
  flag = 0;
  sm.update(student, teacher, sb, tb, 1);
  EXPECT_NE(host(teacher), t0);

  const OwnedTensor queue(Device::CPU, Shape{4, 2}), keys(Device::CPU, Shape{2, 2});
  fill_zero(queue.t);
  for (int i = 0; i < 4; ++i) keys.t.f32()[i] = kNaN;
  flag = 1;
  EXPECT_EQ(ops::queue_enqueue(queue.t, keys.t, 2, &flag), 0);  // the pointer moves on
  for (int i = 0; i < 8; ++i) EXPECT_EQ(queue.t.f32()[i], 0.0f);
  flag = 0;
  ops::queue_enqueue(queue.t, keys.t, 2, &flag);
  EXPECT_TRUE(std::isnan(queue.t.f32()[4]));
}

// Skip must leave no trace. Two runs of 6 steps: one in skip mode whose step 3 has a NaN
// gradient, one that never takes step 3. They must end with the same weights, AdamW moments
// and step count (the bias corrections of steps 4 and 5 count the steps taken, not the steps
// seen) and the same teacher. The teacher's ages, reconstructed on the host from the draws,
// must be those the kernel made: an SE teacher (replace) of a student that holds k + 1 at step
// k tells in every element when the kernel last replaced it.
TEST(NonfiniteSkip, ASkippedStepLeavesOptimizerAndTeacherAsIfItNeverHappened) {
  constexpr int kSteps = 6, kBad = 3;
  Three three;
  ParamTable no_buffers;
  OptimizerConfig oc;
  oc.kind = OptimizerKind::AdamW;
  oc.weight_decay = 0.1f;
  TeacherConfig tc;
  tc.mode = SmoothingMode::Se;
  tc.preserve_prob = 0.5f;
  tc.granularity = Granularity::Element;
  tc.schedule = MomentumSchedule::Constant;
  tc.seed = 11;
  struct Run {
    Optimizer opt;
    TeacherSmoother sm;
    Arena w, g, student, teacher, sb, tb;
    Run(const ParamTable& t, const ParamTable& nb, const OptimizerConfig& oc, const TeacherConfig& tc)
        : opt(t, Device::CPU, oc), sm(t, nb, Device::CPU, tc), w(t, Device::CPU), g(t, Device::CPU),
          student(t, Device::CPU), teacher(t, Device::CPU), sb(nb, Device::CPU), tb(nb, Device::CPU) {
      fill(w, 1.0f);
    }
    void step(int k) {
      opt.step(w, g, 0.01f);
      fill(student, 0.0f);
      for (int64_t i = 0; i < student.table().arena_numel(); ++i) student.data()[i] = static_cast<float>(k + 1);
      sm.update(student, teacher, sb, tb, k);
    }
  };
  Run skipped(three.t, no_buffers, oc, tc), never(three.t, no_buffers, oc, tc);
  NonfiniteGuard guard("skip", Device::CPU);
  guard.monitor().watch_gradients("", skipped.g);
  guard.monitor().poison_at(kBad, "b.weight");
  skipped.opt.skip_when(guard.skip_flag());
  guard.skip_teacher(skipped.sm);
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  for (int k = 0; k < kSteps; ++k) {
    fill(skipped.g, 0.1f * static_cast<float>(k + 1));
    guard.monitor().check_step(k, loss.t);
    skipped.step(k);
    if (k == kBad) continue;
    fill(never.g, 0.1f * static_cast<float>(k + 1));
    never.step(k);
  }
  EXPECT_EQ(guard.read("NOTE"), 1);
  EXPECT_EQ(skipped.opt.steps(), kSteps - 1);
  EXPECT_EQ(never.opt.steps(), kSteps - 1);
  EXPECT_EQ(host(skipped.w), host(never.w));
  for (size_t i = 0; i < 2; ++i)
    EXPECT_EQ(host(*skipped.opt.state_arenas()[i].second), host(*never.opt.state_arenas()[i].second)) << i;
  EXPECT_EQ(host(skipped.teacher), host(never.teacher));

  // Ages: the kernel's (from the teacher's values) against the host's, step 3 left out.
  const std::vector<SlotAges> ages = skipped.sm.ages_at(kSteps - 1), naive = never.sm.ages_at(kSteps - 1);
  int differ = 0;
  for (size_t k = 0; k < ages.size(); ++k) {
    const Slot& s = three.t[k];
    for (int64_t e = 0; e < s.numel; ++e) {
      const float v = skipped.teacher.data()[s.offset + e];
      const int64_t kernel_age = v == 0.0f ? kSteps : kSteps - static_cast<int64_t>(v);
      EXPECT_EQ(ages[k].age[static_cast<size_t>(e)], kernel_age) << s.name << " " << e;
      differ += naive[k].age[static_cast<size_t>(e)] != kernel_age;
    }
  }
  EXPECT_GT(differ, 0) << "step 3's draws replace nothing that matters: the test would not see a miscount";
  EXPECT_EQ(skipped.sm.stats_at(kBad).params_updated, 0.0);
  EXPECT_GT(never.sm.stats_at(kBad).params_updated, 0.0);

  // The checkpoint keeps the optimizer's count and the skipped steps for a resumed run.
  EXPECT_EQ(skipped.opt.state_strings().at("optim.steps"), std::to_string(kSteps - 1));
  const std::string path = ::testing::TempDir() + "tessera_nonfinite_skip_" + std::to_string(::getpid());
  SafetensorsWriter w;
  const std::vector<float> one = {1.0f};
  w.add_f32("x", {1}, one.data());
  guard.before_save(w, "NOTE");
  w.write(path);
  NonfiniteGuard resumed("skip", Device::CPU);
  resumed.restore(SafetensorsFile::read(path));
  fs::remove(path);
  EXPECT_EQ(resumed.monitor().bad_steps(), (std::vector<int64_t>{kBad}));
  EXPECT_EQ(resumed.read("NOTE"), 1);
}

// ---- --nonfinite-check ops: the first op, in execution order ------------------------------

// A small MLP on one parameter arena, the hidden layer's relu under a layer name.
struct MlpStep {
  static ParamTable table() {
    ParamTable t;
    t.add("fc1.weight", Shape{8, 5}, ParamKind::LinearWeight);
    t.add("fc1.bias", Shape{8}, ParamKind::Bias);
    t.add("fc2.weight", Shape{3, 8}, ParamKind::LinearWeight);
    t.add("fc2.bias", Shape{3}, ParamKind::Bias);
    return t;
  }
  ParamTable t = table();
  Arena w{t, Device::CPU}, g{t, Device::CPU};
  OwnedTensor x{Device::CPU, Shape{4, 5}}, labels{Device::CPU, Shape{4}, DType::I32};
  MlpStep() {
    fill(w, 0.1f);
    for (int64_t i = 0; i < 20; ++i) x.t.f32()[i] = 0.05f * static_cast<float>(i % 7) - 0.1f;
    for (int32_t i = 0; i < 4; ++i) labels.t.i32()[i] = i % 3;
  }
  // Slot i of the arenas as a parameter of `graph`, under its table name.
  Var* param(Graph& graph, size_t i) { return graph.param(w.slot(i), g.slot(i), t[i].name.c_str()); }
  // Forward and backward of step `step`, then the monitor's check.
  void run(NonfiniteMonitor& m, int64_t step) {
    fill_zero(g.all());
    Workspace ws(Device::CPU);
    Graph graph(ws);
    Var* in = graph.input(x.t, "x");
    Var* h = ops::linear(graph, in, param(graph, 0), param(graph, 1));
    {
      profile::LayerScope layer("block1.act");
      h = ops::relu(graph, h);
    }
    Var* logits = ops::linear(graph, h, param(graph, 2), param(graph, 3));
    Var* loss = ops::cross_entropy(graph, logits, labels.t);
    graph.backward(loss);
    m.check_step(step, loss->value);
  }
};

std::string stop_message(NonfiniteGuard& guard) {
  return thrown<Error>([&] { guard.read("NOTE"); });
}

// A NaN put into the relu's output (forward) reaches the loss and every gradient; one put into
// the first gradient the backward of the last linear writes reaches the first layer's
// gradients. Either way the message names the op that made it first: op, direction, layer
// and shape; before, it named only the loss or the first gradient slot.
TEST(NonfiniteOps, NamesTheFirstOpThatWentNonfinite) {
  for (const char* hook : {"forward:relu", "backward:linear"}) {
    MlpStep mlp;
    NonfiniteGuard guard("stop", Device::CPU);
    guard.monitor().watch_gradients("", mlp.g);
    guard.monitor().check_ops(0);
    guard.monitor().poison_at(1, hook);
    mlp.run(guard.monitor(), 0);
    EXPECT_EQ(guard.read("NOTE"), 0) << hook;
    mlp.run(guard.monitor(), 1);
    const std::string m = stop_message(guard);
    EXPECT_NE(m.find("step 1: "), std::string::npos) << m;
    if (std::string(hook) == "forward:relu") {
      EXPECT_NE(m.find("the loss is not finite"), std::string::npos) << m;
      EXPECT_NE(m.find("the first op that went non-finite: relu in 'block1.act', output (4, 8)"), std::string::npos)
          << m;
    } else {
      EXPECT_NE(m.find("the gradient of 'fc1.weight' is not finite"), std::string::npos) << m;
      EXPECT_NE(m.find("the first op that went non-finite: the backward of linear"), std::string::npos) << m;
      EXPECT_NE(m.find("gradient (4, 8)"), std::string::npos) << m;
    }
  }
  // Without the mode the message says how to get the op.
  MlpStep mlp;
  NonfiniteGuard guard("stop", Device::CPU);
  guard.monitor().watch_gradients("", mlp.g);
  guard.monitor().poison_at(0, "fc2.bias");
  mlp.run(guard.monitor(), 0);
  const std::string m = stop_message(guard);
  EXPECT_NE(m.find("the gradient of 'fc2.bias' is not finite"), std::string::npos) << m;
  EXPECT_NE(m.find("resume from the last checkpoint with --nonfinite-check ops"), std::string::npos) << m;
}

// The first op of the step (number 0) is named like any other; a loss that goes bad with no
// op before it says so. A bad step 0 stops the run like any other step.
TEST(NonfiniteOps, TheFirstOpAndNoOpAtAll) {
  {
    MlpStep mlp;
    NonfiniteGuard guard("stop", Device::CPU);
    guard.monitor().watch_gradients("", mlp.g);
    guard.monitor().check_ops(0);
    guard.monitor().poison_at(0, "forward:linear");
    mlp.run(guard.monitor(), 0);
    const std::string m = stop_message(guard);
    EXPECT_NE(m.find("step 0: the loss is not finite"), std::string::npos) << m;
    EXPECT_NE(m.find("the first op that went non-finite: linear in 'fc1.weight', output (4, 8)"), std::string::npos)
        << m;
  }
  MlpStep mlp;
  NonfiniteGuard guard("stop", Device::CPU);
  guard.monitor().watch_gradients("", mlp.g);
  guard.monitor().check_ops(0);
  guard.monitor().poison_at(0, "loss");  // after every op ran clean
  mlp.run(guard.monitor(), 0);
  const std::string m = stop_message(guard);
  EXPECT_NE(m.find("step 0: the loss is not finite (NaN or infinity); no op's output or gradient was non-finite "
                   "before it; stopped without saving that step (--on-nonfinite stop); NOTE. Lower --lr"),
            std::string::npos)
      << m;
}

// check_ops called again (a resumed run attaching its guard) keeps checking; the same hook at
// two steps poisons both; the names of a later step's ops are that step's.
TEST(NonfiniteOps, LaterStepsAndRepeatedCalls) {
  MlpStep mlp;
  NonfiniteGuard guard("skip", Device::CPU);
  guard.monitor().watch_gradients("", mlp.g);
  guard.monitor().check_ops(0);
  guard.monitor().check_ops(0);
  EXPECT_TRUE(guard.monitor().checking_ops());
  guard.monitor().poison_at(2, "forward:relu");
  guard.monitor().poison_at(3, "forward:relu");
  for (int64_t step = 0; step < 5; ++step) mlp.run(guard.monitor(), step);
  EXPECT_EQ(guard.monitor().bad_steps(), (std::vector<int64_t>{2, 3}));
  const kernels::NonfiniteRecord r = guard.monitor().read();
  EXPECT_EQ(r.first_step, 2);
  EXPECT_EQ(guard.monitor().describe_op(r.first_op), "relu in 'block1.act', output (4, 8)");
}

// An op the model does not name is placed after the last op it did name, past any unnamed ops
// between them: here the sum after the relu after fc1's linear.
TEST(NonfiniteOps, UnnamedOpsArePlacedAfterTheLastNamedOne) {
  MlpStep mlp;
  NonfiniteGuard guard("stop", Device::CPU);
  guard.monitor().check_ops(0);
  guard.monitor().poison_at(0, "forward:sum");
  Workspace ws(Device::CPU);
  Graph graph(ws);
  Var* h = ops::linear(graph, graph.input(mlp.x.t, "x"), mlp.param(graph, 0), mlp.param(graph, 1));
  Var* loss = ops::sum(graph, ops::relu(graph, h));
  guard.monitor().check_step(0, loss->value);
  const std::string m = stop_message(guard);
  EXPECT_NE(m.find("the first op that went non-finite: sum after 'fc1.weight', output (1)"), std::string::npos) << m;
}

// "forward:OP" poisons the first op of that name in the step, not every one: of two linears
// of the same input, the second one's output stays finite.
TEST(NonfiniteOps, TheHookPoisonsOnlyTheFirstOpOfItsName) {
  MlpStep mlp;
  NonfiniteGuard guard("skip", Device::CPU);
  guard.monitor().check_ops(0);
  guard.monitor().poison_at(0, "forward:linear");
  Workspace ws(Device::CPU);
  Graph graph(ws);
  Var* x = graph.input(mlp.x.t, "x");
  Var* w = mlp.param(graph, 0);
  Var* b = mlp.param(graph, 1);
  Var* first = ops::linear(graph, x, w, b);
  Var* second = ops::linear(graph, x, w, b);
  guard.monitor().check_step(0, ops::sum(graph, first)->value);
  const std::vector<float> a = to_host_f32(first->value), c = to_host_f32(second->value);
  EXPECT_TRUE(std::isnan(a[0]));
  for (float v : c) EXPECT_TRUE(std::isfinite(v));
}

// ---- the guard: policy, test hook, restore, the ring -----------------------------------------

TEST(NonfiniteGuard, PolicyIsStopOrSkip) {
  EXPECT_EQ(parse_on_nonfinite("stop"), OnNonfinite::Stop);
  EXPECT_EQ(parse_on_nonfinite("skip"), OnNonfinite::Skip);
  try {
    parse_on_nonfinite("Skip");
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "--on-nonfinite: expected stop|skip, found 'Skip'");
  }
  EXPECT_FALSE(NonfiniteGuard("stop", Device::CPU).skipping());
  NonfiniteGuard skip("skip", Device::CPU);
  EXPECT_TRUE(skip.skipping());
  EXPECT_NE(skip.skip_flag(), nullptr);
}

// $TESSERA_INJECT_NONFINITE: STEP:TENSOR items, comma-separated; STEP a number >= 0 ending at
// the colon. Each armed item poisons its step; anything else is refused whole.
TEST(NonfiniteGuard, TestHookTakesStepColonTensorItems) {
  auto armed = [](const char* value) {
    ::setenv("TESSERA_INJECT_NONFINITE", value, 1);
    auto guard = std::make_unique<NonfiniteGuard>("skip", Device::CPU);
    std::string error;
    try {
      guard->arm_test_hook();
    } catch (const Error& e) {
      error = e.what();
    }
    ::unsetenv("TESSERA_INJECT_NONFINITE");
    return std::make_pair(std::move(guard), error);
  };
  const OwnedTensor loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  auto [guard, error] = armed("2:loss,4:loss");
  ASSERT_EQ(error, "");
  for (int64_t step = 0; step < 6; ++step) {
    fill_zero(loss.t);  // the hook's NaN stays in the tensor it poisoned
    guard->monitor().check_step(step, loss.t);
  }
  EXPECT_EQ(guard->monitor().bad_steps(), (std::vector<int64_t>{2, 4}));
  for (const char* bad : {"x:loss", "-1:loss", "3loss", "3 :loss", "2:loss,7"}) {
    const std::string e = armed(bad).second;
    const std::string item = std::string(bad) == "2:loss,7" ? "7" : bad;
    EXPECT_EQ(e, "$TESSERA_INJECT_NONFINITE: expected STEP:TENSOR, found '" + item + "'") << bad;
  }
}

// A resumed run takes the count and the steps skipped before from the checkpoint (steps
// sorted), adds its own, and writes both back; a count that is not a whole number >= 0 is
// refused, naming the file and the key.
TEST(NonfiniteGuard, RestoreAndSaveTheSkippedSteps) {
  const std::string dir = ::testing::TempDir() + "tessera_nonfinite_restore_" + std::to_string(::getpid());
  fs::create_directories(dir);
  const std::string path = dir + "/c.safetensors";
  auto checkpoint = [&](const std::map<std::string, std::string>& metadata) {
    SafetensorsWriter w;
    w.add_i64("n", {1}, {0});
    for (const auto& kv : metadata) w.add_metadata(kv.first, kv.second);
    w.write(path);
    return SafetensorsFile::read(path);
  };
  auto saved = [&](NonfiniteGuard& guard) {
    SafetensorsWriter w;
    w.add_i64("n", {1}, {0});
    guard.before_save(w, "NOTE");
    w.write(path);
    return SafetensorsFile::read(path).metadata();
  };
  const OwnedTensor loss(Device::CPU, Shape{1}), nan_loss(Device::CPU, Shape{1});
  fill_zero(loss.t);
  fill_value(nan_loss.t, kNaN);

  NonfiniteGuard guard("skip", Device::CPU);
  guard.restore(checkpoint({{NonfiniteGuard::kSkippedKey, "2"}, {NonfiniteGuard::kSkippedStepsKey, "7,3"}}));
  EXPECT_EQ(guard.read("NOTE"), 2);
  EXPECT_EQ(guard.monitor().bad_steps(), (std::vector<int64_t>{3, 7}));
  guard.monitor().check_step(9, nan_loss.t);
  guard.monitor().check_step(10, loss.t);
  EXPECT_EQ(guard.read("NOTE"), 3);
  std::map<std::string, std::string> m = saved(guard);
  EXPECT_EQ(m[NonfiniteGuard::kSkippedKey], "3");
  EXPECT_EQ(m[NonfiniteGuard::kSkippedStepsKey], "3,7,9");

  // Nothing skipped, before or now: a count of 0 and no list. Stop mode records neither.
  NonfiniteGuard fresh("skip", Device::CPU);
  fresh.restore(checkpoint({}));
  EXPECT_EQ(fresh.read("NOTE"), 0);
  m = saved(fresh);
  EXPECT_EQ(m[NonfiniteGuard::kSkippedKey], "0");
  EXPECT_EQ(m.count(NonfiniteGuard::kSkippedStepsKey), 0u);
  NonfiniteGuard stop("stop", Device::CPU);
  m = saved(stop);
  EXPECT_EQ(m.count(NonfiniteGuard::kSkippedKey), 0u);
  EXPECT_EQ(m.count(NonfiniteGuard::kSkippedStepsKey), 0u);

  for (const char* key : {NonfiniteGuard::kSkippedKey, NonfiniteGuard::kSkippedStepsKey})
    for (const char* bad : {"-1", "x", "", "4x"}) {
      NonfiniteGuard g("skip", Device::CPU);
      std::string e;
      try {
        g.restore(checkpoint({{key, bad}}));
      } catch (const Error& err) {
        e = err.what();
      }
      const bool list_of_none = std::string(bad).empty() && key == std::string(NonfiniteGuard::kSkippedStepsKey);
      if (list_of_none) {
        EXPECT_EQ(e, "") << key;  // an empty list has no item to refuse
      } else {
        EXPECT_EQ(e, path + ": metadata " + key + ": expected a count, found '" + bad + "'") << key << " " << bad;
      }
    }
  fs::remove_all(dir);
}

// More skipped steps between two reads of the list than the record's ring holds: the run says
// so once (the teacher's ages count the unlisted ones as updates), not at every line.
TEST(NonfiniteGuard, WarnsOnceWhenSkippedStepsOutrunTheRing) {
  NonfiniteGuard guard("skip", Device::CPU);
  const OwnedTensor nan_loss(Device::CPU, Shape{1});
  fill_value(nan_loss.t, kNaN);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(guard.read("NOTE"), 0);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  for (int64_t step = 0; step < kernels::kNonfiniteRing + 2; ++step) guard.monitor().check_step(step, nan_loss.t);
  EXPECT_EQ(guard.monitor().bad_steps().size(), static_cast<size_t>(kernels::kNonfiniteRing));
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(guard.read("NOTE"), kernels::kNonfiniteRing + 2);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "warning: more than 256 steps were skipped between two metrics lines; the teacher's ages count 2 of "
            "them as updates (lower --log-every)\n");
  ::testing::internal::CaptureStderr();
  guard.read("NOTE");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  // Another 258 between two reads: the lost steps add up.
  for (int64_t step = 0; step < kernels::kNonfiniteRing + 2; ++step) guard.monitor().check_step(step, nan_loss.t);
  EXPECT_EQ(guard.monitor().bad_steps().size(), static_cast<size_t>(2 * kernels::kNonfiniteRing));
  EXPECT_EQ(guard.monitor().bad_steps_lost(), 4);
}

TEST(NonfiniteCheckpoint, WriterFindsTheFirstNonfiniteTensor) {
  SafetensorsWriter w;
  const std::vector<float> ok = {1, 2}, bad = {3, -kInf};
  w.add_f32("a", {2}, ok.data());
  EXPECT_EQ(w.first_nonfinite(), "");
  w.add_f32("b", {2}, bad.data());
  EXPECT_EQ(w.first_nonfinite(), "b (element 1 = -inf)");
}

// Only f32 tensors are scanned: integer tensors whose bytes would read as a NaN (all ones)
// are counters and labels, not a sign that training diverged.
TEST(NonfiniteCheckpoint, WriterSkipsIntegerTensors) {
  SafetensorsWriter w;
  w.add_i64("count", {1}, {-1});
  w.add_i32("labels", {2}, {-1, -1});
  w.add_u8("mask", {4}, {255, 255, 255, 255});
  EXPECT_EQ(w.first_nonfinite(), "");
  const std::vector<float> bad = {kInf};
  w.add_f32("w", {1}, bad.data());
  EXPECT_EQ(w.first_nonfinite(), "w (element 0 = inf)");
}

}  // namespace
}  // namespace tessera
