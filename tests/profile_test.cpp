// The profiler (engine/profile.h): off means off (no timing hook, no synchronisation), the
// table accounts for the whole measured step, labels reach the rows, costs give rates.
//
// No assertion here compares two clock readings that a busy machine can move apart: time is
// checked through what holds on any machine (spans nested inside others are no longer than
// them, sums add up, a known sleep takes at least its length, in the bucket it was in).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/teacher.h"
#include "kernels/elementwise.h"
#include "tests/op_case.h"

#if TESSERA_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera {
namespace {

using profile::LayerScope;
using profile::PhaseScope;
using profile::Profiler;
using profile::StepWindow;

// A small CPU training-like step: two element-wise layers forward, their backward. Big
// enough (n floats) that kernels, not bookkeeping, take the time. 7 timed calls: the
// forward 2, the backward 2, zeroing the parameter gradient, zeroing the output's gradient and
// copying the seed gradient into it (block2's backward writes block1's output gradient without
// zeroing it first: Graph::grad_to_write).
struct TinyStep {
  explicit TinyStep(int64_t n, Device d = Device::CPU) : ws(d), x(d, Shape{n}), dx(d, Shape{n}), seed(d, Shape{n}) {
    fill_value(x, 0.5f);
    fill_value(seed, 1.0f);
  }
  void run() {
    ws.reset();
    Graph g(ws);
    {
      PhaseScope phase("student_forward");
      fill_zero(dx);
      Var* v = g.param(x, dx, "x");
      {
        LayerScope layer("block1");
        v = ops::relu(g, v);
      }
      {
        LayerScope layer("block2");
        v = ops::leaky_relu(g, v, 0.1f);
      }
      out = v;
    }
    PhaseScope phase("backward");
    g.backward(out, seed);
  }
  Workspace ws;
  OwnedTensor x, dx, seed;
  Var* out = nullptr;
};

TEST(Profile, OffAddsNoTimingHooksAndNoSynchronisation) {
  TinyStep step(1 << 10);
  // No profiler at all.
  int64_t hooks = profile::timing_hook_calls(), syncs = synchronize_count();
  for (int k = 0; k < 3; ++k) step.run();
  EXPECT_EQ(profile::timing_hook_calls(), hooks);
  EXPECT_EQ(synchronize_count(), syncs);

  // A profiler whose window is steps [3, 5): silent before and after it.
  Profiler prof(StepWindow::parse("3:5"), Device::CPU, "", /*print=*/false);
  std::vector<int64_t> hooks_per_step, syncs_per_step;
  for (int k = 0; k < 8; ++k) {
    hooks = profile::timing_hook_calls();
    syncs = synchronize_count();
    prof.begin_step(k);
    step.run();
    prof.end_step(k);
    hooks_per_step.push_back(profile::timing_hook_calls() - hooks);
    syncs_per_step.push_back(synchronize_count() - syncs);
  }
  for (int k : {0, 1, 2, 5, 6, 7}) {
    EXPECT_EQ(hooks_per_step[k], 0) << "timing hooks ran at step " << k << ", outside the window";
    EXPECT_EQ(syncs_per_step[k], 0) << "a synchronisation at step " << k << ", outside the window";
  }
  // Inside: two marks per timed call (6), per phase (2) and per step (1).
  EXPECT_EQ(hooks_per_step[3], 2 * (6 + 2 + 1));
  EXPECT_EQ(hooks_per_step[4], 2 * (6 + 2 + 1));
  EXPECT_EQ(syncs_per_step[3], 0) << "marks are resolved once, when the window closes";
  EXPECT_EQ(syncs_per_step[4], 1) << "the window's one synchronisation, at its end";
  ASSERT_TRUE(prof.window_done());
  EXPECT_EQ(prof.report()->steps, 2);
}

// The rows TinyStep's 7 timed calls make, as (phase, kernel, layer).
using RowKey = std::tuple<std::string, std::string, std::string>;
const std::set<RowKey>& tiny_step_rows() {
  static const std::set<RowKey> rows = {
      {"student_forward", "fill_zero", ""},           {"student_forward", "leaky_relu_forward", "block1"},
      {"student_forward", "leaky_relu_forward", "block2"}, {"backward", "copy", ""},
      {"backward", "leaky_relu_backward", "block2"},  {"backward", "leaky_relu_backward", "block1"}};
  return rows;
}

// Slack for comparing sums of spans that are nested in exact arithmetic (ms). Host marks are
// doubles of ms since the clock's epoch (boot): after months of uptime one is resolved to
// about 1e-6 ms, and a sum of dozens of spans can be off by some tens of that. The bugs these
// checks are for move times by milliseconds.
constexpr double kSlackMs = 1e-3;

// What holds for any report, whatever the machine's speed: every row has calls and a
// non-negative time, rows of a phase fit in that phase, phases fit in the steps, rows plus
// the outside-kernels time are the step time and shares add up to one.
void expect_consistent(const profile::Report& r, double slack_ms) {
  double rows_ms = 0, shares = r.outside_ms / r.step_ms;
  std::map<std::string, double> phase_rows_ms;
  for (const auto& row : r.rows) {
    EXPECT_GT(row.calls, 0) << row.kernel;
    EXPECT_GE(row.total_ms, 0.0) << row.kernel;
    rows_ms += row.total_ms;
    shares += row.share;
    phase_rows_ms[row.phase] += row.total_ms;
  }
  EXPECT_NEAR(rows_ms, r.kernel_ms, slack_ms);
  EXPECT_NEAR(rows_ms + r.outside_ms, r.step_ms, slack_ms);
  EXPECT_GE(r.outside_ms, -slack_ms) << "kernel spans add up to more than the steps holding them";
  EXPECT_NEAR(shares, 1.0, 1e-9) << "shares plus the outside-kernels row must cover the step";
  double phases_ms = 0;
  for (const auto& p : r.phases) {
    phases_ms += p.total_ms;
    EXPECT_LE(phase_rows_ms[p.name], p.total_ms + slack_ms) << "kernels of " << p.name << " outlast the phase";
  }
  EXPECT_LE(phases_ms, r.step_ms + slack_ms) << "phases outlast the steps holding them";
}

TEST(Profile, TableAccountsForTheMeasuredStepTime) {
  TinyStep step(1 << 20);  // 4 MiB per tensor: each kernel takes ~1 ms on one core
  Profiler prof(StepWindow::parse("2:6"), Device::CPU, "", /*print=*/false);
  double measured_ms = 0;
  for (int k = 0; k < 6; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    prof.begin_step(k);
    step.run();
    prof.end_step(k);
    const auto t1 = std::chrono::steady_clock::now();
    if (k >= 2) measured_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
  }
  ASSERT_TRUE(prof.window_done());
  const profile::Report& r = *prof.report();
  std::printf("%s", r.table().c_str());
  EXPECT_EQ(r.steps, 4);
  // The profiler's step marks are taken inside [t0, t1] on the same clock: never longer.
  EXPECT_LE(r.step_ms, measured_ms + kSlackMs) << "the table's total is not the step time";
  EXPECT_GT(r.step_ms, 0.0);
  expect_consistent(r, kSlackMs);

  // Every call of every step is in the table, under its phase and layer, and nothing else:
  // forward under the LayerScope, backward under the label recorded on the tape.
  std::set<RowKey> keys;
  int64_t calls = 0;
  for (const auto& row : r.rows) {
    keys.emplace(row.phase, row.kernel, row.layer);
    EXPECT_EQ(row.calls, 4) << row.phase << "/" << row.kernel << "/" << row.layer << ": once per step";
    EXPECT_EQ(row.device, Device::CPU);
    calls += row.calls;
  }
  EXPECT_EQ(keys, tiny_step_rows()) << r.table();
  EXPECT_EQ(calls, 4 * 6);
  EXPECT_EQ(r.untimed_calls, 0);
  auto find = [&](const std::string& phase, const std::string& kernel, const std::string& layer) {
    for (const auto& row : r.rows)
      if (row.phase == phase && row.kernel == kernel && row.layer == layer) return &row;
    return static_cast<const profile::Report::Row*>(nullptr);
  };
  const auto* fwd = find("student_forward", "leaky_relu_forward", "block2");
  ASSERT_NE(fwd, nullptr) << r.table();
  // Cost from kernels/elementwise.h: 8 bytes per element forward.
  EXPECT_DOUBLE_EQ(fwd->bytes, 4.0 * 8.0 * (1 << 20));
  ASSERT_EQ(r.phases.size(), 2u);
  EXPECT_EQ(r.phases[0].name, "student_forward");
  EXPECT_EQ(r.phases[1].name, "backward");
}

// Known sleeps in known places: each is found, at least as long as it was, in its bucket. A
// sleep lasts at least what was asked (on the steady clock the profiler reads), so these are
// lower bounds a loaded machine cannot break; structure (which row, which phase, how many
// calls) is exact. Per step: 4 ms in "data" outside any kernel, 8 ms in a kernel labelled
// "head" in "optimizer", 2 ms between the phases.
TEST(Profile, KnownSleepsLandInTheirBuckets) {
  constexpr double kData = 4, kKernel = 8, kBetween = 2;
  const auto sleep_ms = [](double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); };
  Profiler prof(StepWindow::parse("1:3"), Device::CPU, "", /*print=*/false);
  for (int k = 0; k < 4; ++k) {
    prof.begin_step(k);
    {
      PhaseScope phase("data");
      sleep_ms(kData);
    }
    sleep_ms(kBetween);
    {
      PhaseScope phase("optimizer");
      LayerScope layer("head");
      profile::KernelScope kernel("test_sleep_kernel", Device::CPU);
      sleep_ms(kKernel);
    }
    prof.end_step(k);
  }
  ASSERT_TRUE(prof.window_done());
  const profile::Report& r = *prof.report();
  const std::string table = r.table();
  EXPECT_EQ(r.steps, 2);
  expect_consistent(r, kSlackMs);

  ASSERT_EQ(r.rows.size(), 1u) << "only the kernel is a row; the other sleeps are outside kernels\n" << table;
  const auto& row = r.rows[0];
  EXPECT_EQ(row.phase, "optimizer") << table;
  EXPECT_EQ(row.kernel, "test_sleep_kernel") << table;
  EXPECT_EQ(row.layer, "head") << table;
  EXPECT_EQ(row.calls, 2) << table;
  EXPECT_GE(row.total_ms, 2 * kKernel) << table;
  EXPECT_GE(r.kernel_ms, 2 * kKernel) << table;
  EXPECT_GE(r.outside_ms, 2 * (kData + kBetween)) << table;
  EXPECT_GE(r.step_ms, 2 * (kData + kBetween + kKernel)) << table;

  ASSERT_EQ(r.phases.size(), 2u) << table;
  EXPECT_EQ(r.phases[0].name, "data");
  EXPECT_EQ(r.phases[1].name, "optimizer");
  EXPECT_GE(r.phases[0].total_ms, 2 * kData) << table;
  EXPECT_GE(r.phases[1].total_ms, 2 * kKernel) << table;
  // The 2 ms between the phases is in neither: both phases together leave it out of the step.
  EXPECT_LE(r.phases[0].total_ms + r.phases[1].total_ms, r.step_ms - 2 * kBetween + kSlackMs) << table;
}

#if TESSERA_CUDA
// A host function on the engine's stream: the stream waits for it, so the CUDA events recorded
// before and after it are at least its sleep apart.
void CUDART_CB sleep_on_stream(void* ms) {
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(*static_cast<const double*>(ms)));
}
#endif

// The CUDA timing path (events on the engine's stream, resolved when the window closes) with
// the same checks as the CPU tests: TinyStep's rows on the GPU, a consistent table, and stream
// work of a known length (a host function that sleeps, enqueued between the kernel scope's
// marks) found in its row at no less than its length. Event times are floats: the slack
// is wider than on the CPU. Written without a GPU to run it on: kept to the CPU tests' checks.
TEST(Profile, CudaEventTimingAttributesStreamWork) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA profiler timing not run: " << reason;
#if TESSERA_CUDA
  static const double kSleepMs = 8;
  // Event timestamps have about half a microsecond of resolution.
  constexpr double kResolutionMs = 0.01, kEventSlackMs = 0.01;
  TinyStep step(1 << 16, Device::CUDA);
  Profiler prof(StepWindow::parse("1:3"), Device::CUDA, "", /*print=*/false);
  const int64_t syncs_before = synchronize_count();
  for (int k = 0; k < 4; ++k) {
    prof.begin_step(k);
    step.run();
    {
      PhaseScope phase("optimizer");
      LayerScope layer("head");
      profile::KernelScope kernel("stream_sleep", Device::CUDA);
      CUDA_CHECK(cudaLaunchHostFunc(kernels::cuda::runtime().stream, sleep_on_stream,
                                    const_cast<double*>(&kSleepMs)));
      kernel.stop();
    }
    prof.end_step(k);
  }
  EXPECT_GE(synchronize_count() - syncs_before, 1) << "the window must synchronise once to resolve its events";
  ASSERT_TRUE(prof.window_done());
  const profile::Report& r = *prof.report();
  const std::string table = r.table();
  EXPECT_EQ(r.device, Device::CUDA);
  EXPECT_EQ(r.steps, 2);
  expect_consistent(r, kEventSlackMs);

  std::set<RowKey> keys;
  for (const auto& row : r.rows) {
    keys.emplace(row.phase, row.kernel, row.layer);
    EXPECT_EQ(row.device, Device::CUDA) << row.kernel;
    EXPECT_EQ(row.calls, 2) << row.phase << "/" << row.kernel << "/" << row.layer << ": once per step";
  }
  std::set<RowKey> want = tiny_step_rows();
  want.emplace("optimizer", "stream_sleep", "head");
  EXPECT_EQ(keys, want) << table;
  for (const auto& row : r.rows) {
    if (row.kernel == "stream_sleep") {
      EXPECT_GE(row.total_ms, 2 * (kSleepMs - kResolutionMs)) << table;
    }
  }
  EXPECT_GE(r.step_ms, 2 * (kSleepMs - kResolutionMs)) << table;
#endif
}

TEST(Profile, OpsLabelKernelsWithTheirWeightUnlessTheModelDid) {
  CpuKernelsScope reference(CpuKernels::Reference);  // the kernels' plain names (the fast tier adds "_onednn")
  Workspace ws(Device::CPU);
  OwnedTensor x(Device::CPU, Shape{4, 8}), w(Device::CPU, Shape{3, 8}), dw(Device::CPU, Shape{3, 8}),
      seed(Device::CPU, Shape{4, 3});
  fill_value(x, 1.0f);
  fill_value(w, 0.5f);
  fill_value(seed, 1.0f);
  fill_zero(dw);
  Profiler prof(StepWindow::parse("0:1"), Device::CPU, "", /*print=*/false);
  prof.begin_step(0);
  {
    Graph g(ws);
    Var* xv = g.input(x, "images");
    Var* wv = g.param(w, dw, "fc.weight");
    Var* y = ops::linear(g, xv, wv, nullptr);
    {
      LayerScope layer("head");
      ops::linear(g, xv, wv, nullptr);
    }
    {
      LayerScope block("fc");  // a label the weight's name extends: refined to "fc"
      ops::linear(g, xv, wv, nullptr);
    }
    g.backward(y, seed);
  }
  prof.end_step(0);
  ASSERT_TRUE(prof.window_done());
  std::vector<std::string> labels;
  for (const auto& row : prof.report()->rows) {
    if (row.kernel != "linear_forward" && row.kernel != "linear_backward_weight") continue;
    labels.push_back(row.kernel + "/" + row.layer);
    EXPECT_EQ(row.calls, row.layer == "fc" ? 2 : 1) << row.kernel << "/" << row.layer;
  }
  std::sort(labels.begin(), labels.end());
  const std::vector<std::string> expected = {"linear_backward_weight/fc", "linear_backward_weight/head",
                                             "linear_forward/fc", "linear_forward/head"};
  EXPECT_EQ(labels, expected) << prof.report()->table();
}

TEST(Profile, CallerCostIsEvaluatedOnlyInsideTheWindow) {
  OwnedTensor t(Device::CPU, Shape{16});
  int evaluated = 0;
  const auto cost = [&evaluated] {
    ++evaluated;
    return kernels::Cost{100.0, 7.0};
  };
  Profiler prof(StepWindow::parse("1:2"), Device::CPU, "", /*print=*/false);
  for (int k = 0; k < 3; ++k) {
    prof.begin_step(k);
    TS_DISPATCH_COST(Device::CPU, fill, cost(), t.t.f32(), t.t.numel(), 1.0f);
    prof.end_step(k);
  }
  EXPECT_EQ(evaluated, 1);
  ASSERT_TRUE(prof.window_done());
  ASSERT_EQ(prof.report()->rows.size(), 1u);
  EXPECT_EQ(prof.report()->rows[0].kernel, "fill");
  EXPECT_DOUBLE_EQ(prof.report()->rows[0].bytes, 100.0);  // the caller's, not fill's declared 4 n
  EXPECT_DOUBLE_EQ(prof.report()->rows[0].flops, 7.0);
}

// The teacher update's declared cost (engine/teacher.cpp, kernels/teacher_update.h): 12 bytes
// and 3 FLOPs per updated parameter, the expected share 1 - p of them. 100 parameters at
// p = 0.75: 12 * 0.25 * 100 = 300 bytes and 3 * 0.25 * 100 = 75 FLOPs, under the mode's label.
TEST(Profile, TeacherUpdateCostCountsTheExpectedUpdatedShare) {
  ParamTable params, no_buffers;
  params.add("fc.weight", Shape{10, 10}, ParamKind::LinearWeight);
  TeacherConfig c;
  c.mode = SmoothingMode::Sts;
  c.preserve_prob = 0.75f;
  c.schedule = MomentumSchedule::Constant;
  TeacherSmoother sm(params, no_buffers, Device::CPU, c);
  Arena student(params, Device::CPU), teacher(params, Device::CPU), sb(no_buffers, Device::CPU),
      tb(no_buffers, Device::CPU);
  Profiler prof(StepWindow::parse("1:2"), Device::CPU, "", /*print=*/false);
  for (int k = 0; k < 3; ++k) {
    prof.begin_step(k);
    sm.update(student, teacher, sb, tb, k);
    prof.end_step(k);
  }
  ASSERT_TRUE(prof.window_done());
  ASSERT_EQ(prof.report()->rows.size(), 1u) << prof.report()->table();
  const auto& row = prof.report()->rows[0];
  EXPECT_EQ(row.kernel, "teacher_update");
  EXPECT_EQ(row.layer, "sts");
  EXPECT_DOUBLE_EQ(row.bytes, 300.0);
  EXPECT_DOUBLE_EQ(row.flops, 75.0);
}

TEST(Profile, PhaseSequenceClosesEachPhaseAtTheNext) {
  OwnedTensor t(Device::CPU, Shape{1 << 12});
  Profiler prof(StepWindow::parse("0:1"), Device::CPU, "", /*print=*/false);
  prof.begin_step(0);
  {
    profile::PhaseSequence phases;
    phases.enter("data");
    fill_value(t, 1.0f);
    phases.enter("optimizer");
    fill_value(t, 2.0f);
    fill_value(t, 3.0f);
    phases.leave();
    fill_value(t, 4.0f);  // in no phase
  }
  prof.end_step(0);
  ASSERT_TRUE(prof.window_done());
  std::map<std::string, int64_t> calls;
  for (const auto& row : prof.report()->rows) calls[row.phase] += row.calls;
  EXPECT_EQ(calls["data"], 1);
  EXPECT_EQ(calls["optimizer"], 2);
  EXPECT_EQ(calls[""], 1);
  ASSERT_EQ(prof.report()->phases.size(), 2u);
  EXPECT_EQ(prof.report()->phases[0].name, "data");
  EXPECT_EQ(prof.report()->phases[1].name, "optimizer");
}

TEST(Profile, WritesProfileJson) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("tessera_profile_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    TinyStep step(1 << 8);
    Profiler prof(StepWindow::parse("0:2"), Device::CPU, dir.string(), /*print=*/false);
    for (int k = 0; k < 3; ++k) {
      prof.begin_step(k);
      step.run();
      prof.end_step(k);
    }
  }
  std::ifstream in(dir / "profile.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_EQ(j["window"][0], 0);
  EXPECT_EQ(j["window"][1], 2);
  EXPECT_FALSE(j["rows"].empty());
  EXPECT_TRUE(j["rows"][0].contains("gb_per_s"));
  std::filesystem::remove_all(dir);
}

TEST(Profile, WindowCutShortIsReportedByFinish) {
  TinyStep step(1 << 8);
  Profiler prof(StepWindow::parse("1:100"), Device::CPU, "", /*print=*/false);
  for (int k = 0; k < 4; ++k) {
    prof.begin_step(k);
    step.run();
    prof.end_step(k);
  }
  EXPECT_FALSE(prof.window_done());
  prof.finish();
  ASSERT_TRUE(prof.window_done());
  EXPECT_EQ(prof.report()->steps, 3);
}

// The kernel census (TESSERA_KERNEL_CENSUS=DIR): this binary, run on one op case, writes
// DIR/kernels-PID.tsv at exit with the kernels it dispatched, by device, and their calls.
TEST(Profile, KernelCensusListsTheDispatchedKernelsAtExit) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / ("tessera_census_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  // Not a shard of a sharded run (gpu-check): the child's one test would land in shard 0 only.
  const std::string cmd = "env -u GTEST_TOTAL_SHARDS -u GTEST_SHARD_INDEX TESSERA_KERNEL_CENSUS='" + dir.string() +
                          "' OMP_NUM_THREADS=1 '" + self +
                          "' --gtest_filter=BackendOpsGrad.max_pool2d_3x3_s2_p1 >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::map<std::string, long> calls;  // "device kernel" -> calls
  int files = 0;
  for (const auto& f : fs::directory_iterator(dir)) {
    ++files;
    std::ifstream in(f.path());
    std::string device, kernel;
    for (long n; in >> device >> kernel >> n;) calls[device + " " + kernel] += n;
  }
  EXPECT_EQ(files, 1);
  EXPECT_GT(calls["cpu max_pool2d_forward"], 0);
  EXPECT_GT(calls["cpu max_pool2d_backward"], 0);
  for (const auto& [key, n] : calls) EXPECT_EQ(key.rfind("cpu ", 0), 0u) << key << ": not on the CPU";
  fs::remove_all(dir);
}

TEST(Profile, StepWindowParsing) {
  EXPECT_FALSE(StepWindow::parse("").enabled());
  const StepWindow w = StepWindow::parse("10:20");
  EXPECT_EQ(w.first, 10);
  EXPECT_EQ(w.last, 20);
  EXPECT_TRUE(w.contains(10));
  EXPECT_TRUE(w.contains(19));
  EXPECT_FALSE(w.contains(20));
  for (const char* bad : {"10", "20:10", "5:5", "-1:3", "a:b", "1:2x", ":3", "3:"})
    EXPECT_THROW(StepWindow::parse(bad), UsageError) << bad;
}

}  // namespace
}  // namespace tessera
