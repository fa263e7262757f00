// Injected faults that must lose nothing: the built programs run with the fault shim
// (tests/fault_inject/fault_inject.cpp, preloaded) making write / fsync / rename fail with
// ENOSPC or EIO, a write stop halfway through a record, or every read come back short.
// Whatever fails, the previous checkpoint, config.json and metrics.jsonl stay whole and
// loadable, the program exits 1 naming the file and the error, and a resume after the fault
// ends exactly where an undisturbed run ends.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "tests/program_runs.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

struct Fixture : program_runs::SyntheticData {
  std::string shim = (fs::read_symlink("/proc/self/exe").parent_path() / "libtessera_fault.so").string();
  Fixture() : SyntheticData("faults", 64, 1, 40, 2) {}
};

const Fixture& fixture() {
  static Fixture f;
  return f;
}

// byol's tiny recipe (as tests/byol_test.cpp): 4 steps per epoch, 2 epochs, a checkpoint every 3.
std::vector<std::string> tiny(const std::string& out) {
  return {"--data", "mnist:" + fixture().data, "--out", out, "--device", "cpu", "--width", "4",
          "--proj-hidden", "16", "--proj-dim", "8", "--pred-hidden", "16", "--batch-size", "16",
          "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--warmup-epochs", "1",
          "--log-every", "1", "--save-every", "3", "--eval-batch", "32", "--probe-epochs", "3",
          "--momentum", "0.9"};
}

using program_runs::with;

program_runs::Result run(const std::string& program, const std::vector<std::string>& args,
                         const std::string& fault = "") {
  if (fault.empty()) return program_runs::run(program, args);
  return program_runs::run(program, args, {"LD_PRELOAD=" + fixture().shim, "TESSERA_FAULT=" + fault});
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Files a failed write may have left behind: temporaries of the atomic writes.
std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) out.push_back(e.path().string());
  return out;
}

// Every line of metrics.jsonl is a whole JSON object (no line cut by the fault).
void expect_whole_lines(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  int n = 0;
  for (std::string line; std::getline(in, line); ++n) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << dir << "/metrics.jsonl line " << n + 1 << " is cut: " << line;
  }
  EXPECT_GT(n, 0);
  const std::string text = bytes_of(dir + "/metrics.jsonl");
  EXPECT_TRUE(text.empty() || text.back() == '\n') << "metrics.jsonl ends inside a line";
}

// The uninterrupted run every faulted-then-resumed run must end equal to.
const std::string& whole_run() {
  static const std::string dir = [] {
    const std::string d = fixture().root + "/whole";
    const program_runs::Result r = run("byol", tiny(d));
    EXPECT_EQ(r.status, 0) << r.output;
    return d;
  }();
  return dir;
}

// A run stopped at step 3 with its checkpoint: the state a fault must not damage.
std::string run_to_step_3(const std::string& name) {
  const std::string dir = fixture().root + "/" + name;
  const program_runs::Result r = run("byol", with(tiny(dir), {"--stop-after", "3"}));
  EXPECT_EQ(r.status, 0) << r.output;
  return dir;
}

// The shim is loaded and fires: without it every test below would pass vacuously.
TEST(Faults, TheShimMakesAWriteFail) {
  ASSERT_TRUE(fs::exists(fixture().shim)) << fixture().shim << " missing: make all builds it";
  const std::string out = fixture().root + "/shim.safetensors";
  const program_runs::Result r = run("init", {"--arch", "resnet18", "--width", "4", "--out", out},
                                     "write:ENOSPC:1:shim.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("fault_inject: write"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}

struct CheckpointFault {
  const char* name;
  const char* fault;
  const char* error;  // what the program must say
};

class CheckpointFaults : public ::testing::TestWithParam<CheckpointFault> {};

// Resuming at step 3 and failing to save at step 6: exit 1 naming the checkpoint and the error,
// the step-3 checkpoint byte for byte as it was, no temporary left, metrics whole; then a
// resume without the fault finishes exactly as the undisturbed run.
TEST_P(CheckpointFaults, LeaveThePreviousCheckpointAndResumeFromIt) {
  const CheckpointFault& c = GetParam();
  const std::string dir = run_to_step_3(std::string("ckpt-") + c.name);
  const std::string before = bytes_of(dir + "/last.safetensors");
  ASSERT_FALSE(before.empty());

  const program_runs::Result r = run("byol", {"--resume", dir, "--stop-after", "6"}, c.fault);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("last.safetensors"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(c.error), std::string::npos) << r.output;
  EXPECT_EQ(bytes_of(dir + "/last.safetensors"), before) << "the previous checkpoint changed";
  EXPECT_EQ(SafetensorsFile::read(dir + "/last.safetensors").metadata("run.step"), "3");
  EXPECT_TRUE(leftovers(dir).empty()) << leftovers(dir).front();
  expect_whole_lines(dir);

  const program_runs::Result resumed = run("byol", {"--resume", dir});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  program_runs::expect_same_run(whole_run(), dir);
}

INSTANTIATE_TEST_SUITE_P(
    Faults, CheckpointFaults,
    ::testing::Values(CheckpointFault{"write_enospc", "write:ENOSPC:1+:last.safetensors", "No space left on device"},
                      CheckpointFault{"write_half", "write:partial:1:last.safetensors", "No space left on device"},
                      CheckpointFault{"fsync_eio", "fsync:EIO:1:last.safetensors", "Input/output error"},
                      CheckpointFault{"rename_eio", "rename:EIO:1:last.safetensors", "Input/output error"}),
    [](const ::testing::TestParamInfo<CheckpointFault>& i) { return std::string(i.param.name); });

// The disk fills up in the middle of a metrics line: the half line is removed, the run exits 1
// naming metrics.jsonl, and a resume continues to the undisturbed run's end.
TEST(Faults, AMetricsLineCutByAFullDiskIsRemoved) {
  const std::string dir = run_to_step_3("metrics");
  const program_runs::Result r = run("byol", {"--resume", dir}, "write:partial:2:metrics.jsonl");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("metrics.jsonl"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fault_inject: write"), std::string::npos) << "the fault never fired:\n" << r.output;
  expect_whole_lines(dir);
  EXPECT_EQ(SafetensorsFile::read(dir + "/last.safetensors").metadata("run.step"), "3");

  const program_runs::Result resumed = run("byol", {"--resume", dir});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  program_runs::expect_same_run(whole_run(), dir);
}

// config.json is rewritten when a resumed run first saves, before its checkpoint; failing that
// leaves the old one and the checkpoint.
TEST(Faults, AFailedConfigWriteKeepsTheRunDirectory) {
  const std::string dir = run_to_step_3("config");
  const std::string config = bytes_of(dir + "/config.json"), ckpt = bytes_of(dir + "/last.safetensors");
  for (const char* fault : {"write:ENOSPC:1:config.json", "fsync:EIO:1:config.json", "rename:EIO:1:config.json"}) {
    const program_runs::Result r = run("byol", {"--resume", dir}, fault);
    EXPECT_EQ(r.status, 1) << fault << "\n" << r.output;
    EXPECT_NE(r.output.find("config.json"), std::string::npos) << fault << "\n" << r.output;
    EXPECT_EQ(bytes_of(dir + "/config.json"), config) << fault;
    EXPECT_EQ(bytes_of(dir + "/last.safetensors"), ckpt) << fault;
    EXPECT_TRUE(leftovers(dir).empty()) << fault << ": " << leftovers(dir).front();
  }
  const program_runs::Result resumed = run("byol", {"--resume", dir});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  program_runs::expect_same_run(whole_run(), dir);
}

// build/init, build/embed and build/augment-grid replace their output file whole or not at all.
TEST(Faults, ToolsKeepTheirOldOutputWhenAWriteFails) {
  const std::string init_out = fixture().root + "/model.safetensors";
  const std::vector<std::string> init_args = {"--arch", "resnet18", "--width", "4", "--in-channels", "1",
                                              "--out", init_out};
  ASSERT_EQ(run("init", init_args).status, 0);
  const std::string model = bytes_of(init_out);
  for (const char* fault : {"write:partial:1:model.safetensors", "fsync:EIO:1:model.safetensors",
                            "rename:ENOSPC:1:model.safetensors"}) {
    const program_runs::Result r = run("init", with(init_args, {"--seed", "7"}), fault);
    EXPECT_EQ(r.status, 1) << fault << "\n" << r.output;
    EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
    EXPECT_EQ(bytes_of(init_out), model) << fault;
    EXPECT_TRUE(leftovers(fixture().root).empty()) << fault << ": " << leftovers(fixture().root).front();
  }

  const std::string embed_out = fixture().root + "/features.safetensors";
  const std::vector<std::string> embed_args = {"--checkpoint", init_out, "--data", "mnist:" + fixture().data,
                                               "--out", embed_out, "--device", "cpu"};
  const program_runs::Result first = run("embed", embed_args);
  ASSERT_EQ(first.status, 0) << first.output;
  const std::string features = bytes_of(embed_out);
  for (const char* fault : {"write:ENOSPC:1+:features.safetensors", "rename:EIO:1:features.safetensors"}) {
    const program_runs::Result r = run("embed", with(embed_args, {"--limit", "8"}), fault);
    EXPECT_EQ(r.status, 1) << fault << "\n" << r.output;
    EXPECT_NE(r.output.find("features.safetensors"), std::string::npos) << r.output;
    EXPECT_EQ(bytes_of(embed_out), features) << fault;
  }

  // augment-grid encodes the PNG in memory and writes it the same way.
  const std::string grid_out = fixture().root + "/grid.png";
  const std::vector<std::string> grid_args = {"--data", "mnist:" + fixture().data, "--out", grid_out, "--n", "2",
                                              "--device", "cpu"};
  const program_runs::Result grid = run("augment-grid", grid_args);
  ASSERT_EQ(grid.status, 0) << grid.output;
  const std::string png = bytes_of(grid_out);
  for (const char* fault : {"write:partial:1:grid.png", "fsync:EIO:1:grid.png", "rename:ENOSPC:1:grid.png"}) {
    const program_runs::Result r = run("augment-grid", with(grid_args, {"--seed", "3"}), fault);
    EXPECT_EQ(r.status, 1) << fault << "\n" << r.output;
    EXPECT_NE(r.output.find("grid.png"), std::string::npos) << r.output;
    EXPECT_EQ(bytes_of(grid_out), png) << fault;
    EXPECT_TRUE(leftovers(fixture().root).empty()) << fault << ": " << leftovers(fixture().root).front();
  }
}

// Every read of the run's files returns at most 3 bytes (legal for read(2)): the dataset,
// config and checkpoint readers loop, so the resumed run is the same run.
TEST(Faults, ShortReadsChangeNothing) {
  const std::string dir = run_to_step_3("short-reads");
  const program_runs::Result r = run("byol", {"--resume", dir}, "read:short:1+:" + fixture().root);
  ASSERT_EQ(r.status, 0) << r.output;
  program_runs::expect_same_run(whole_run(), dir);
}

}  // namespace
}  // namespace tessera
