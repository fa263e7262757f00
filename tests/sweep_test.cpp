// apps/tools/sweep.py and apps/tools/plot.py, driven as a user would, on configs/sweeps/smoke.toml
// (BYOL, 2 cells x 2 seeds of a tiny network) over generated 8 x 8 images:
//
//   stop and continue   the runner is interrupted (SIGINT, as Ctrl-C) while its second run
//                       trains: it exits 130, the first run is finished, the second holds a
//                       checkpoint and no final event, the others have not started; started
//                       again it resumes the second run from its checkpoint, leaves the first
//                       untouched and finishes the rest; a third start runs nothing
//   summary             summary.md holds each cell's n and mean +- std, recomputed here from
//                       the runs' final events
//   bad input           a bad sweep file is one line and exit 2
//   plot                plot.py draws the finished sweep into PNG files (skipped, with the
//                       reason, where python3-matplotlib is missing)
//
// The runner and the programs run as processes of their own (build/byol next to this binary).
// Tests run from the repository root (make test), like tests/torchvision_test.cpp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/check.h"
#include "tests/program_runs.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const char* const kPython = "/usr/bin/python3";
const char* const kSweepFile = "configs/sweeps/smoke.toml";
const char* const kCells[] = {"smoothing=se", "smoothing=sts"};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool has_final(const std::string& run) { return slurp(run + "/metrics.jsonl").find("\"final\"") != std::string::npos; }

// python3 SCRIPT ARGS... with stdout and stderr to `log`; returns the child's pid. Everything
// is prepared before fork(): the child of a threaded process only opens, dups and execs.
pid_t spawn(const std::string& script, const std::vector<std::string>& args, const std::string& log) {
  std::vector<const char*> argv{kPython, script.c_str()};
  for (const std::string& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) ::_exit(127);
    ::execv(kPython, const_cast<char* const*>(argv.data()));
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The smoke sweep, stopped once and continued twice; what each phase printed and left.
struct SmokeSweep {
  std::string skip;  // why it could not run
  std::string root, sweep_dir, out1, out2, out3;
  int rc1 = -1, rc2 = -1, rc3 = -1;
  bool stopped_in_time = false;        // the SIGINT reached the second run before it finished
  bool first_final_at_stop = false, second_checkpoint_at_stop = false, second_final_at_stop = true;
  int runs_started_at_stop = 0;
  std::string first_metrics_at_stop;   // the finished run's log, to see it untouched

  std::string run_dir(const char* cell, int seed) const { return cat(sweep_dir, "/", cell, "/seed-", seed); }

  SmokeSweep() {
    if (!fs::exists(kPython)) {
      skip = cat(kPython, " not found");
      return;
    }
    const fs::path build = fs::read_symlink("/proc/self/exe").parent_path();
    if (!fs::exists(build / "byol")) {
      skip = cat((build / "byol").string(), " not found: build the programs with the tests (make all)");
      return;
    }
    root = cat(::testing::TempDir(), "tessera_sweep_", ::getpid());
    fs::remove_all(root);
    fs::create_directories(root + "/data");
    program_runs::write_synthetic_idx(root + "/data", "train", 64, 1);
    program_runs::write_synthetic_idx(root + "/data", "t10k", 40, 2);
    sweep_dir = root + "/runs/smoke";
    // One run at a time, so the interruption finds exactly one finished run and one running;
    // 100 steps give the interruption a window of about a second.
    const std::vector<std::string> args{kSweepFile, "--out", root + "/runs", "--build", build.string(),
                                        "--parallel", "1", "--set", "data=mnist:" + root + "/data",
                                        "--set", "steps=100", "--set", "mosaic-steps=5,100"};
    const std::string script = "apps/tools/sweep.py";

    // A Python without tomllib (before 3.11) cannot read sweep files: sweep.py exits 77.
    if (wait_exit(spawn(script, {"--help"}, root + "/help.log")) != 0) {
      skip = slurp(root + "/help.log");
      return;
    }
    // Phase 1: interrupt while the second run trains, after its first checkpoint.
    const pid_t pid = spawn(script, args, root + "/phase1.log");
    const std::string first = run_dir(kCells[0], 0), second = run_dir(kCells[1], 0);
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      if (fs::exists(second + "/last.safetensors")) break;
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {  // ended on its own: nothing to interrupt
        rc1 = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        out1 = slurp(root + "/phase1.log");
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ::kill(pid, SIGINT);
    rc1 = wait_exit(pid);
    out1 = slurp(root + "/phase1.log");
    first_final_at_stop = has_final(first);
    second_checkpoint_at_stop = fs::exists(second + "/last.safetensors");
    second_final_at_stop = has_final(second);
    stopped_in_time = second_checkpoint_at_stop && !second_final_at_stop;
    for (const char* cell : kCells)
      for (int seed : {0, 1}) runs_started_at_stop += fs::exists(run_dir(cell, seed) + "/metrics.jsonl");
    first_metrics_at_stop = slurp(first + "/metrics.jsonl");

    // Phase 2: the same command again finishes the sweep; phase 3 finds nothing to do.
    rc2 = wait_exit(spawn(script, args, root + "/phase2.log"));
    out2 = slurp(root + "/phase2.log");
    rc3 = wait_exit(spawn(script, args, root + "/phase3.log"));
    out3 = slurp(root + "/phase3.log");
  }
  ~SmokeSweep() {
    if (!root.empty()) fs::remove_all(root);
  }
};

const SmokeSweep& smoke() {
  static SmokeSweep s;
  return s;
}

TEST(Sweep, StopsOnSigintAndContinuesWithoutRedoingFinishedRuns) {
  ASSERT_TRUE(fs::exists(kSweepFile)) << "run the tests from the repository root: " << kSweepFile << " not found";
  const SmokeSweep& s = smoke();
  if (!s.skip.empty()) GTEST_SKIP() << s.skip;
  ASSERT_TRUE(s.stopped_in_time) << "the interruption came too late to test resumption (second run: checkpoint "
                                 << s.second_checkpoint_at_stop << ", final " << s.second_final_at_stop
                                 << "); runner output:\n" << s.out1;
  EXPECT_EQ(s.rc1, 130) << s.out1;
  EXPECT_NE(s.out1.find("interrupted"), std::string::npos) << s.out1;
  EXPECT_TRUE(s.first_final_at_stop) << s.out1;
  EXPECT_EQ(s.runs_started_at_stop, 2) << "only the first two runs may have started:\n" << s.out1;

  EXPECT_EQ(s.rc2, 0) << s.out2;
  // The interrupted run resumed from its checkpoint; the finished one was left alone.
  EXPECT_NE(s.out2.find("smoothing=sts/seed-0: resumed at step"), std::string::npos) << s.out2;
  EXPECT_EQ(s.out2.find("smoothing=se/seed-0: "), std::string::npos) << "a finished run ran again:\n" << s.out2;
  EXPECT_NE(s.out2.find("4 runs, 1 finished, 3 to run"), std::string::npos) << s.out2;
  EXPECT_EQ(slurp(s.run_dir(kCells[0], 0) + "/metrics.jsonl"), s.first_metrics_at_stop);
  for (const char* cell : kCells)
    for (int seed : {0, 1}) {
      const std::string run = s.run_dir(cell, seed);
      EXPECT_TRUE(has_final(run)) << run;
      // A resumed log reads like an uninterrupted one: train steps 5, 10, ..., 100 once each.
      std::vector<int64_t> steps;
      for (const nlohmann::json& e : program_runs::events(run))
        if (e["event"] == "train") steps.push_back(e["step"].get<int64_t>());
      ASSERT_EQ(steps.size(), 20u) << run;
      for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], 5 * static_cast<int64_t>(i + 1)) << run;
      EXPECT_TRUE(fs::exists(run + "/mosaic-100.json")) << run;
    }

  EXPECT_EQ(s.rc3, 0) << s.out3;
  EXPECT_NE(s.out3.find("4 runs, 4 finished, 0 to run"), std::string::npos) << s.out3;
  EXPECT_EQ(s.out3.find("started"), std::string::npos) << s.out3;
}

std::string fixed(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

// summary.md: each cell's row holds n = 2 and mean +- sample std of the final scores.
TEST(Sweep, SummaryHoldsMeanAndStdOfEachCell) {
  const SmokeSweep& s = smoke();
  if (!s.skip.empty()) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.rc2, 0) << s.out2;
  const std::string table = slurp(s.sweep_dir + "/summary.md");
  ASSERT_FALSE(table.empty());
  EXPECT_NE(s.out3.find(table), std::string::npos) << "the table is printed too";
  for (const char* cell : kCells) {
    std::string row;
    std::istringstream lines(table);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind(cat("| ", cell, " | 2 |"), 0) == 0) row = line;
    ASSERT_FALSE(row.empty()) << "no row with n = 2 for " << cell << " in\n" << table;
    for (const char* key : {"linear_top1_teacher", "knn_top1_teacher", "linear_top1_student",
                            "linear_top1_baseline"}) {
      std::vector<double> v;
      for (int seed : {0, 1})
        for (const nlohmann::json& e : program_runs::events(s.run_dir(cell, seed)))
          if (e["event"] == "final") v.push_back(e[key].get<double>());
      ASSERT_EQ(v.size(), 2u) << cell;
      const double mean = (v[0] + v[1]) / 2, sd = std::fabs(v[0] - v[1]) / std::sqrt(2.0);
      EXPECT_NE(row.find(cat(fixed(mean, 2), " ± ", fixed(sd, 2))), std::string::npos) << key << " in " << row;
    }
  }
  // Every run is listed too.
  for (const char* cell : kCells)
    for (int seed : {0, 1}) EXPECT_NE(table.find(cat("| ", cell, " | ", seed, " |")), std::string::npos) << table;
}

TEST(Sweep, BadSweepFileIsOneLineAndExit2) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found";
  const std::string dir = cat(::testing::TempDir(), "tessera_sweep_bad_", ::getpid());
  fs::create_directories(dir);
  std::ofstream(dir + "/bad.toml") << "program = \"simclr\"\n";
  std::ofstream(dir + "/clash.toml") << "program = \"byol\"\n[grid]\nseed = [1, 2]\n";
  const struct {
    const char* file;
    const char* says;
  } cases[] = {{"bad.toml", "program: expected one of byol, fixmatch, moco, found 'simclr'"},
               {"clash.toml", "the runner sets --seed itself"},
               {"missing.toml", "cannot read it"}};
  for (const auto& c : cases) {
    const int rc = wait_exit(spawn("apps/tools/sweep.py", {dir + "/" + c.file, "--out", dir}, dir + "/log"));
    const std::string out = slurp(dir + "/log");
    if (rc == 77) GTEST_SKIP() << out;  // no tomllib: the smoke sweep says so too
    EXPECT_EQ(rc, 2) << c.file << ": " << out;
    EXPECT_NE(out.find(c.says), std::string::npos) << c.file << ": " << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << c.file << ": " << out;
  }
  fs::remove_all(dir);
}

// plot.py on the finished smoke sweep: the curves, the age histogram and the mosaic of the
// chosen step (and of no other).
TEST(Plot, DrawsTheSweepIntoPngFiles) {
  const SmokeSweep& s = smoke();
  if (!s.skip.empty()) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.rc2, 0) << s.out2;
  const std::string out = s.root + "/plots";
  const int rc = wait_exit(spawn("apps/tools/plot.py", {s.sweep_dir, "--out", out, "--mosaic-step", "100"}, s.root + "/plot.log"));
  const std::string log = slurp(s.root + "/plot.log");
  if (rc == 77) GTEST_SKIP() << log;
  ASSERT_EQ(rc, 0) << log;
  for (const char* name : {"training.png", "accuracy.png", "ages.png", "mosaic-100.png"}) {
    const std::string png = slurp(out + "/" + name);
    EXPECT_GT(png.size(), 5000u) << name;
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << name;
  }
  EXPECT_FALSE(fs::exists(out + "/mosaic-5.png"));
  EXPECT_NE(log.find("4 runs in 2 curves"), std::string::npos) << log;
  // Bad input: one line, exit 2.
  const int bad = wait_exit(spawn("apps/tools/plot.py", {s.root + "/nowhere"}, s.root + "/plot-bad.log"));
  EXPECT_EQ(bad, 2) << slurp(s.root + "/plot-bad.log");
}

}  // namespace
}  // namespace tessera
