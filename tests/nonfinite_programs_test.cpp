// Non-finite values in the programs (apps/run/nonfinite.h; the kernel, monitor and guard are in
// tests/nonfinite_test.cpp): byol, moco and fixmatch with a NaN injected
// (TESSERA_INJECT_NONFINITE). Stop exits 1 naming the step and the tensor, the last checkpoint
// is the one before that step and holds only finite values; skip finishes, counts the skipped
// steps in metrics.jsonl and the checkpoint, and every weight is finite.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/nonfinite.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "tests/program_runs.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

const program_runs::SyntheticData& fixture() {
  static const program_runs::SyntheticData f("nonfinite", 64, 1, 40, 2);
  return f;
}

using program_runs::with;

// Tiny runs of 8 steps (as tests/byol_test.cpp, tests/moco_test.cpp, tests/fixmatch_test.cpp),
// a checkpoint every 3 steps.
std::vector<std::string> tiny(const std::string& program, const std::string& out) {
  const std::string data = "mnist:" + fixture().data;
  if (program == "byol")
    return {"--data", data, "--out", out, "--device", "cpu", "--width", "4", "--proj-hidden", "16", "--proj-dim", "8",
            "--pred-hidden", "16", "--batch-size", "16", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05",
            "--warmup-epochs", "1", "--save-every", "3", "--eval-batch", "32", "--probe-epochs", "1"};
  if (program == "moco")
    return {"--data", data, "--out", out, "--device", "cpu", "--width", "4", "--head-hidden", "16", "--head-dim", "8",
            "--batch-size", "16", "--queue", "32", "--bn-splits", "4", "--epochs", "2", "--lr", "0.8",
            "--save-every", "3", "--eval-batch", "32", "--probe-epochs", "1"};
  return {"--data", data, "--out", out, "--device", "cpu", "--arch", "wrn-10-1", "--labels", "20", "--batch-size",
          "4", "--mu", "2", "--steps", "8", "--threshold", "0.1", "--eval-every", "0", "--eval-batch", "25",
          "--save-every", "3"};
}

void expect_all_finite(const std::string& checkpoint) {
  const SafetensorsFile f = SafetensorsFile::read(checkpoint);
  int checked = 0;
  for (const auto& [name, e] : f.tensors()) {
    if (e.dtype != StDType::F32) continue;
    for (float v : f.f32(name)) ASSERT_TRUE(std::isfinite(v)) << checkpoint << ": " << name;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

struct ProgramCase {
  const char* program;
  const char* tensor;  // a gradient the hook poisons (its checkpoint name, with the part's prefix)
};

class NonfinitePrograms : public ::testing::TestWithParam<ProgramCase> {};

// Stop, read at a checkpoint: a NaN in a gradient at step 4 (0-based) with no log line
// until the end; the checkpoint of step 6 would be the first to hold it, and is refused.
TEST_P(NonfinitePrograms, StopExitsNamingStepAndTensorKeepingTheLastGoodCheckpoint) {
  const ProgramCase pc = GetParam();
  const std::string out = fixture().root + "/" + pc.program + "-stop";
  const program_runs::Result r =
      program_runs::run(pc.program, with(tiny(pc.program, out), {"--log-every", "100"}),
                        {std::string("TESSERA_INJECT_NONFINITE=4:") + pc.tensor});
  ASSERT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(std::string("step 4: the gradient of '") + pc.tensor + "' is not finite"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("holds step 3"), std::string::npos) << r.output;
  const SafetensorsFile f = SafetensorsFile::read(out + "/last.safetensors");
  EXPECT_EQ(f.metadata("run.step"), "3");
  expect_all_finite(out + "/last.safetensors");
  EXPECT_FALSE(fs::exists(out + "/run.lock"));  // released on the way out
}

// Skip: NaNs at steps 2 (a gradient) and 5 (the loss) are dropped; the run finishes with
// finite weights (SGD momentum would have spread a NaN that reached the weights into every
// later checkpoint, which the save refuses), and metrics and checkpoint count two skips.
TEST_P(NonfinitePrograms, SkipDropsTheStepsAndCountsThem) {
  const ProgramCase pc = GetParam();
  const std::string out = fixture().root + "/" + pc.program + "-skip";
  const program_runs::Result r =
      program_runs::run(pc.program, with(tiny(pc.program, out), {"--on-nonfinite", "skip", "--log-every", "1"}),
                        {std::string("TESSERA_INJECT_NONFINITE=2:") + pc.tensor + ",5:loss"});
  ASSERT_EQ(r.status, 0) << r.output;
  expect_all_finite(out + "/last.safetensors");
  EXPECT_EQ(SafetensorsFile::read(out + "/last.safetensors").metadata(NonfiniteGuard::kSkippedKey), "2");
  std::vector<int64_t> counts;
  for (const nlohmann::json& e : program_runs::events(out))
    if (e["event"] == "train") counts.push_back(e.at("nonfinite_skipped").get<int64_t>());
  ASSERT_EQ(counts.size(), 8u);
  EXPECT_EQ(counts, (std::vector<int64_t>{0, 0, 1, 1, 1, 2, 2, 2}));
}

// The count of skipped steps is part of the run: stopped after step 4 with one skip and
// resumed in a fresh process, the run counts the second skip as its second.
TEST_P(NonfinitePrograms, SkippedStepsAreCountedAcrossAResume) {
  const ProgramCase pc = GetParam();
  const std::string out = fixture().root + "/" + pc.program + "-skip-resume";
  const program_runs::Result first = program_runs::run(
      pc.program, with(tiny(pc.program, out), {"--on-nonfinite", "skip", "--log-every", "1", "--stop-after", "4"}),
      {std::string("TESSERA_INJECT_NONFINITE=2:") + pc.tensor});
  ASSERT_EQ(first.status, 0) << first.output;
  EXPECT_EQ(SafetensorsFile::read(out + "/last.safetensors").metadata(NonfiniteGuard::kSkippedKey), "1");
  const program_runs::Result resumed =
      program_runs::run(pc.program, {"--resume", out}, {"TESSERA_INJECT_NONFINITE=5:loss"});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_EQ(SafetensorsFile::read(out + "/last.safetensors").metadata(NonfiniteGuard::kSkippedKey), "2");
  int64_t last = -1;
  for (const nlohmann::json& e : program_runs::events(out))
    if (e["event"] == "train") last = e.at("nonfinite_skipped").get<int64_t>();
  EXPECT_EQ(last, 2);
}

INSTANTIATE_TEST_SUITE_P(Programs, NonfinitePrograms,
                         ::testing::Values(ProgramCase{"byol", "backbone.conv1.weight"},
                                           ProgramCase{"moco", "head.0.weight"},
                                           ProgramCase{"fixmatch", "conv1.weight"}),
                         [](const ::testing::TestParamInfo<ProgramCase>& i) { return std::string(i.param.program); });

// A learning rate that overflows: no hook, the arithmetic itself. The run stops at the first
// non-finite step and never saves one.
TEST(NonfiniteByol, HugeLearningRateStopsWithoutSavingNonfiniteWeights) {
  const std::string out = fixture().root + "/byol-huge-lr";
  const program_runs::Result r =
      program_runs::run("byol", with(tiny("byol", out), {"--lr", "1e30", "--log-every", "1", "--save-every", "1"}));
  ASSERT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("is not finite"), std::string::npos) << r.output;
  if (fs::exists(out + "/last.safetensors")) expect_all_finite(out + "/last.safetensors");
}

// --nonfinite-check ops in a program: a NaN put into the output of step 4's first relu. The
// message names that op and its layer; the flag may be given to a resumed run.
TEST(NonfiniteByol, OpsCheckNamesTheFirstOpThatWentNonfinite) {
  const std::string out = fixture().root + "/byol-ops";
  const program_runs::Result r = program_runs::run(
      "byol", with(tiny("byol", out), {"--nonfinite-check", "ops", "--log-every", "1"}),
      {"TESSERA_INJECT_NONFINITE=4:forward:relu"});
  ASSERT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("step 4: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the first op that went non-finite: relu after '"), std::string::npos) << r.output;
  const program_runs::Result resumed = program_runs::run(
      "byol", {"--resume", out, "--nonfinite-check", "ops"}, {"TESSERA_INJECT_NONFINITE=5:backward:conv2d"});
  ASSERT_EQ(resumed.status, 1) << resumed.output;
  EXPECT_NE(resumed.output.find("step 5: "), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("the first op that went non-finite: the backward of conv2d in '"), std::string::npos)
      << resumed.output;
}

}  // namespace
}  // namespace tessera
