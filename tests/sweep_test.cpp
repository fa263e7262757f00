// apps/tools/sweep.py and apps/tools/plot.py, driven as a user would, on configs/sweeps/smoke.toml
// (BYOL, 2 cells x 2 seeds of a tiny network) over generated 8 x 8 images:
//
//   stop and continue   the runner is interrupted (SIGINT, as Ctrl-C) while its second run
//                       trains: it exits 130, the first run is finished, the second holds a
//                       checkpoint and no final event, the others have not started; started
//                       again it resumes the second run from its checkpoint, leaves the first
//                       untouched and finishes the rest; a third start runs nothing, and so
//                       does a fourth from the copy of the sweep file the runner keeps
//   damaged metrics     a finished run whose metrics.jsonl has a damaged line in the middle
//                       is still finished (the line is skipped with a warning), in a copy of
//                       the sweep directory
//   summary             summary.md holds each cell's n and mean +- std, recomputed here from
//                       the runs' final events
//   bad input           a bad sweep file is one line and exit 2
//   another sweep       a sweep directory holds one sweep: another file of the same name, an
//                       edited file or a --set that differs from a run's config.json is
//                       refused naming the difference, the stored copy unchanged; --data alone
//                       may name where the data set is now
//   plot                plot.py draws the finished sweep into PNG files, and draws around
//                       damaged files (skipped, with the reason, where python3-matplotlib is
//                       missing); its help and usage errors need no matplotlib
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

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

bool is_png(const std::string& path) { return slurp(path).substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8); }

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
  std::string root, sweep_dir, out1, out2, out3, out4;
  int rc1 = -1, rc2 = -1, rc3 = -1, rc4 = -1;
  std::vector<std::string> args;  // the runner's arguments after the sweep file
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
    args = {"--out", root + "/runs", "--build", build.string(), "--parallel", "1",
            "--set", "data=mnist:" + root + "/data", "--set", "steps=100", "--set", "mosaic-steps=5,100"};
    std::vector<std::string> args_of_file{kSweepFile};
    args_of_file.insert(args_of_file.end(), args.begin(), args.end());
    const std::string script = "apps/tools/sweep.py";

    // A Python without tomllib (before 3.11) cannot read sweep files: sweep.py exits 77.
    if (wait_exit(spawn(script, {"--help"}, root + "/help.log")) != 0) {
      skip = slurp(root + "/help.log");
      return;
    }
    // Phase 1: interrupt while the second run trains, after its first checkpoint.
    const pid_t pid = spawn(script, args_of_file, root + "/phase1.log");
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

    // Phase 2: the same command again finishes the sweep; phase 3 finds nothing to do, nor
    // does phase 4, started from the runner's copy of the sweep file.
    rc2 = wait_exit(spawn(script, args_of_file, root + "/phase2.log"));
    out2 = slurp(root + "/phase2.log");
    rc3 = wait_exit(spawn(script, args_of_file, root + "/phase3.log"));
    out3 = slurp(root + "/phase3.log");
    std::vector<std::string> args_of_copy{sweep_dir + "/sweep.toml"};
    args_of_copy.insert(args_of_copy.end(), args.begin(), args.end());
    rc4 = wait_exit(spawn(script, args_of_copy, root + "/phase4.log"));
    out4 = slurp(root + "/phase4.log");
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

// The runner keeps the sweep file it was first started with, and started from that copy it is
// the same sweep (named after its folder, not "sweep"), with nothing left to run.
TEST(Sweep, ContinuesFromTheCopyOfItsSweepFile) {
  const SmokeSweep& s = smoke();
  if (!s.skip.empty()) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.rc2, 0) << s.out2;
  EXPECT_EQ(slurp(s.sweep_dir + "/sweep.toml"), slurp(kSweepFile));
  EXPECT_EQ(s.rc4, 0) << s.out4;
  EXPECT_TRUE(contains(s.out4, "sweep smoke: 4 runs, 4 finished, 0 to run")) << s.out4;
  EXPECT_FALSE(fs::exists(s.root + "/runs/sweep")) << s.out4;
}

// A line damaged in the middle of a finished run's metrics.jsonl is skipped with a warning
// naming the file and the line; the final event after it still makes the run finished, so the
// runner leaves it (and its file) alone. On a copy of the sweep directory, as on another machine.
TEST(Sweep, FinishedRunWithADamagedMetricsLineIsNotRunAgain) {
  const SmokeSweep& s = smoke();
  if (!s.skip.empty()) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.rc2, 0) << s.out2;
  const std::string copy = s.root + "/copy";
  fs::remove_all(copy);
  fs::create_directories(copy);
  fs::copy(s.sweep_dir, copy + "/smoke", fs::copy_options::recursive);
  const std::string metrics = cat(copy, "/smoke/", kCells[0], "/seed-0/metrics.jsonl");
  std::string text = slurp(metrics);
  const size_t second_line = text.find('\n') + 1;
  text.insert(second_line, "{\"event\": \"tra\n42\n");  // lines 2 and 3
  write_file(metrics, text);
  std::vector<std::string> args{kSweepFile};
  args.insert(args.end(), s.args.begin(), s.args.end());
  args[2] = copy;  // --out
  const int rc = wait_exit(spawn("apps/tools/sweep.py", args, s.root + "/damaged.log"));
  const std::string out = slurp(s.root + "/damaged.log");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(contains(out, "4 runs, 4 finished, 0 to run")) << out;
  EXPECT_TRUE(contains(out, metrics + " line 2 is not a JSON object")) << out;
  EXPECT_TRUE(contains(out, metrics + " line 3 is not a JSON object")) << out;
  EXPECT_FALSE(contains(out, "Traceback")) << out;
  EXPECT_EQ(slurp(metrics), text);
  fs::remove_all(copy);
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
  // The table is printed too (by phase 4, the last to write it).
  EXPECT_NE(s.out4.find(table), std::string::npos) << "the table is printed too";
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
  // A seed or a grid value twice would be one run directory counted as two runs.
  write_file(dir + "/twice.toml", "program = \"byol\"\nseeds = [0, 0]\n");
  write_file(dir + "/gridtwice.toml", "program = \"byol\"\n[grid]\nsmoothing = [\"se\", \"se\"]\n");
  // TOML's true is a Python int: not a seed, not a thread count.
  write_file(dir + "/boolseed.toml", "program = \"byol\"\nseeds = [true]\n");
  write_file(dir + "/boolthreads.toml", "program = \"byol\"\nthreads = true\n");
  // The name is one directory under --out, never a path out of it.
  write_file(dir + "/up.toml", "program = \"byol\"\nname = \"../x\"\n");
  write_file(dir + "/abs.toml", "program = \"byol\"\nname = \"/tmp/x\"\n");
  write_file(dir + "/dotdot.toml", "program = \"byol\"\nname = \"..\"\n");
  write_file(dir + "/intname.toml", "program = \"byol\"\nname = 5\n");
  write_file(dir + "/intflags.toml", "program = \"byol\"\nflags = 5\n");
  write_file(dir + "/latin1.toml", "program = \"byol\"\n# caf\xe9\n");
  const struct {
    const char* file;
    const char* says;
  } cases[] = {{"bad.toml", "program: expected one of byol, fixmatch, moco, found 'simclr'"},
               {"clash.toml", "the runner sets --seed itself"},
               {"missing.toml", "cannot read it"},
               {"twice.toml", "seeds: expected distinct integers, found 0 twice"},
               {"gridtwice.toml", "grid.smoothing: expected distinct values, found 'se' twice"},
               {"boolseed.toml", "seeds: expected a list of integers >= 0"},
               {"boolthreads.toml", "threads: expected an integer >= 1"},
               {"up.toml", "name: expected a plain directory name"},
               {"abs.toml", "name: expected a plain directory name"},
               {"dotdot.toml", "name: expected a plain directory name"},
               {"intname.toml", "name: expected a string, found 5"},
               {"intflags.toml", "[flags]: expected a table, found 5"},
               {"latin1.toml", "expected UTF-8 text, found the byte 0xe9"}};
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

// A sweep directory holds one sweep. Another file of the same name, or the same file edited,
// is refused naming the first difference with the copy the runner stored, and so is a --set
// that differs from what a run was started with (its config.json); the stored copy stays as it
// was. The same sweep, from its file or from that copy, reads the runs there: a damaged line
// or one that is JSON but no object is skipped with a warning, a final event whose wall time is
// no number is still a finished run (its wall time "-").
TEST(Sweep, RefusesTheDirectoryOfAnotherSweep) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found";
  const std::string dir = cat(::testing::TempDir(), "tessera_sweep_other_", ::getpid());
  fs::remove_all(dir);
  for (const char* sub : {"/a", "/b", "/c", "/build"}) fs::create_directories(dir + sub);
  const std::string tiny = "program = \"byol\"\nseeds = [0, 1]\n[flags]\nsteps = 4\n[grid]\nsmoothing = [\"se\", \"sts\"]\n";
  std::string edited = tiny;
  edited.replace(edited.find("steps = 4"), 9, "steps = 6");
  write_file(dir + "/a/tiny.toml", tiny);
  write_file(dir + "/b/tiny.toml", edited);
  // --dry-run wants an executable program; it never runs it.
  write_file(dir + "/build/byol", "#!/bin/sh\nexit 3\n");
  fs::permissions(dir + "/build/byol", fs::perms::owner_all);
  // What a runner of a/tiny.toml leaves: its copy of the file and a finished run.
  const std::string out = dir + "/runs", stored = out + "/tiny/sweep.toml", run = out + "/tiny/smoothing=se/seed-0";
  fs::create_directories(run);
  write_file(stored, tiny);
  write_file(run + "/config.json",
             R"({"config": "", "out": "elsewhere", "seed": 0, "smoothing": "se", "steps": 4, "threads": 2})");
  write_file(run + "/metrics.jsonl",
             "{\"event\": \"train\", \"step\": 2, \"loss\": 1.5}\n{\"event\": \"tr\n42\n"
             "{\"event\": \"final\", \"step\": 4, \"linear_top1_teacher\": 12.5, \"wall_s\": \"x\"}\n");
  const std::string log = dir + "/log";
  const struct {
    std::vector<std::string> args;
    const char* says;
  } refused[] = {
      {{dir + "/b/tiny.toml", "--out", out, "--summary"},
       "found another: cell smoothing=se: --steps=4 there, --steps=6 here; give this one another --out or name"},
      {{dir + "/b/tiny.toml", "--out", out, "--dry-run", "--build", dir + "/build"}, "--steps=4 there, --steps=6 here"},
      {{dir + "/a/tiny.toml", "--out", out, "--summary", "--set", "steps=6"},
       "seed-0 was started with (its config.json), found others: --steps=4 there, --steps=6 here"},
  };
  for (const auto& c : refused) {
    const int rc = wait_exit(spawn("apps/tools/sweep.py", c.args, log));
    const std::string said = slurp(log);
    if (rc == 77) GTEST_SKIP() << said;  // no tomllib
    EXPECT_EQ(rc, 2) << said;
    EXPECT_TRUE(contains(said, c.says)) << said;
    EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 1) << said;
  }
  EXPECT_EQ(slurp(stored), tiny);
  EXPECT_FALSE(fs::exists(out + "/tiny/summary.md"));

  const int rc = wait_exit(spawn("apps/tools/sweep.py", {dir + "/a/tiny.toml", "--out", out, "--summary"}, log));
  const std::string table = slurp(log);
  EXPECT_EQ(rc, 0) << table;
  EXPECT_TRUE(contains(table, "| smoothing=se | 1 | 12.50 | - |")) << table;
  EXPECT_TRUE(contains(table, run + "/metrics.jsonl line 2 is not a JSON object")) << table;
  EXPECT_TRUE(contains(table, run + "/metrics.jsonl line 3 is not a JSON object")) << table;
  EXPECT_FALSE(contains(table, "Traceback")) << table;
  // From the stored copy: the sweep "tiny" (its folder's name), the run with a final event done.
  const int rc_copy = wait_exit(spawn("apps/tools/sweep.py", {stored, "--out", out, "--dry-run", "--build", dir + "/build"}, log));
  const std::string dry = slurp(log);
  EXPECT_EQ(rc_copy, 0) << dry;
  EXPECT_TRUE(contains(dry, "smoothing=se/seed-0 [done]")) << dry;
  EXPECT_TRUE(contains(dry, "--out " + out + "/tiny/smoothing=sts/seed-1")) << dry;
  EXPECT_EQ(slurp(stored), tiny);
  // A sweep grows: another seed and another cell are new runs, the runs there unchanged.
  std::string grown = tiny;
  grown.replace(grown.find("[0, 1]"), 6, "[0, 1, 2]");
  grown.replace(grown.find("\"sts\"]"), 6, "\"sts\", \"tma\"]");
  write_file(dir + "/c/tiny.toml", grown);
  const int rc_grown =
      wait_exit(spawn("apps/tools/sweep.py", {dir + "/c/tiny.toml", "--out", out, "--dry-run", "--build", dir + "/build"}, log));
  const std::string plan = slurp(log);
  EXPECT_EQ(rc_grown, 0) << plan;
  EXPECT_TRUE(contains(plan, "smoothing=se/seed-0 [done]")) << plan;
  EXPECT_TRUE(contains(plan, "--out " + out + "/tiny/smoothing=tma/seed-2")) << plan;
  // --data may name where the data set is now: a run started on another path is not refused
  // for it and is resumed with it (the program then compares the images with the fingerprint
  // its checkpoint holds: tests/byol_test.cpp).
  const std::string resumable = out + "/tiny/smoothing=sts/seed-0";
  fs::create_directories(resumable);
  write_file(resumable + "/config.json", R"({"data": "mnist:/old", "seed": 0, "smoothing": "sts", "steps": 4})");
  write_file(resumable + "/last.safetensors", "");
  const int rc_moved = wait_exit(spawn("apps/tools/sweep.py",
                                       {dir + "/a/tiny.toml", "--out", out, "--dry-run", "--build", dir + "/build",
                                        "--set", "data=mnist:/new"},
                                       log));
  const std::string moved = slurp(log);
  EXPECT_EQ(rc_moved, 0) << moved;
  EXPECT_TRUE(contains(moved, "smoothing=sts/seed-0 [resume]: " + dir + "/build/byol --resume " + resumable +
                                  " --data mnist:/new --threads"))
      << moved;
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

// plot.py reads its arguments before it imports matplotlib: --help and every usage error work
// without it, each error one line and exit 2.
TEST(Plot, HelpAndBadUsageNeedNoMatplotlib) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found";
  const std::string dir = cat(::testing::TempDir(), "tessera_plot_usage_", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_file(dir + "/afile", "");
  const int help = wait_exit(spawn("apps/tools/plot.py", {"--help"}, dir + "/log"));
  EXPECT_EQ(help, 0) << slurp(dir + "/log");
  EXPECT_TRUE(contains(slurp(dir + "/log"), "usage: plot.py")) << slurp(dir + "/log");
  const struct {
    std::vector<std::string> args;
    const char* says;
  } cases[] = {{{dir, "--dpi", "0"}, "--dpi: expected an integer in [10, 600], found 0"},
               {{dir, "--dpi", "-3"}, "--dpi: expected an integer in [10, 600], found -3"},
               {{dir, "--dpi", "100000"}, "--dpi: expected an integer in [10, 600], found 100000"},
               {{dir, "--out", dir + "/afile"}, "--out: expected a folder for the PNGs, found the file"},
               {{dir + "/nowhere"}, "expected a run directory or a folder of runs, found no directory"}};
  for (const auto& c : cases) {
    const int rc = wait_exit(spawn("apps/tools/plot.py", c.args, dir + "/log"));
    const std::string said = slurp(dir + "/log");
    EXPECT_EQ(rc, 2) << said;
    EXPECT_TRUE(contains(said, c.says)) << said;
    EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 1) << said;
  }
  fs::remove_all(dir);
}

// plot.py draws around damaged files, with a warning naming each: lines of metrics.jsonl that
// are not JSON objects, events without the fields a figure needs, a mosaic cut short or with no
// slots, a teacher event with no fragments (run b has no age histogram to draw at all); a
// mosaic-old.json is not a program's and is not read.
TEST(Plot, DrawsAroundDamagedFiles) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found";
  const std::string dir = cat(::testing::TempDir(), "tessera_plot_damaged_", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir + "/a");
  fs::create_directories(dir + "/b");
  write_file(dir + "/a/metrics.jsonl",
             "{\"event\": \"train\", \"step\": 1, \"loss\": 1.0, \"lr\": 0.1}\n"
             "42\n"
             "{\"event\": \"tr\n"
             "{\"event\": \"train\", \"loss\": 0.95}\n"
             "{\"event\": \"train\", \"step\": 2, \"loss\": 0.9, \"lr\": 0.1}\n"
             "{\"event\": \"teacher\", \"step\": 1, \"fragments\": 4, \"age_hist\": [3, 1], \"age_mean\": 0.25}\n"
             "{\"event\": \"teacher\", \"step\": 2, \"fragments\": 4, \"age_mean\": 0.5}\n"
             "{\"event\": \"teacher\", \"step\": 3, \"fragments\": 4, \"age_hist\": [2, 1, 1], \"age_mean\": 0.75}\n"
             "{\"event\": \"final\", \"step\": 3, \"linear_top1_teacher\": 10.0, \"wall_s\": \"x\"}\n");
  const std::string mosaic =
      R"({"mode": "sts", "granularity": "channel", "preserve_prob": 0.7, "slots": [{"name": "w", "age": [0, 1, 2]}]})";
  write_file(dir + "/a/mosaic-2.json", mosaic);
  write_file(dir + "/a/mosaic-3.json", mosaic.substr(0, 40));
  write_file(dir + "/a/mosaic-old.json", "{}");
  write_file(dir + "/b/metrics.jsonl",
             "{\"event\": \"train\", \"step\": 1, \"loss\": 1.1}\n"
             "{\"event\": \"teacher\", \"step\": 1, \"fragments\": 0, \"age_hist\": [], \"age_mean\": 0}\n");
  write_file(dir + "/b/mosaic-2.json", R"({"mode": "sts", "granularity": "channel", "preserve_prob": 0.7, "slots": []})");
  const std::string out = dir + "/plots";
  const int rc = wait_exit(spawn("apps/tools/plot.py", {dir + "/a", dir + "/b", "--out", out}, dir + "/log"));
  const std::string log = slurp(dir + "/log");
  if (rc == 77) GTEST_SKIP() << log;  // no matplotlib: it says so
  ASSERT_EQ(rc, 0) << log;
  for (const char* name : {"training.png", "accuracy.png", "ages.png", "mosaic-2.png"})
    EXPECT_TRUE(is_png(out + "/" + name)) << name << "\n" << log;
  EXPECT_FALSE(fs::exists(out + "/mosaic-3.png")) << log;
  for (const std::string& says : {dir + "/a/metrics.jsonl line 2 is not a JSON object",
                                  dir + "/a/metrics.jsonl line 3 is not a JSON object",
                                  dir + "/a/mosaic-3.json: expected a mosaic in JSON",
                                  dir + "/b/mosaic-2.json: expected a mosaic", std::string("found no slots"),
                                  std::string("2 runs in 2 curves")})
    EXPECT_TRUE(contains(log, says)) << says << " in\n" << log;
  EXPECT_FALSE(contains(log, "mosaic-old")) << log;
  EXPECT_FALSE(contains(log, "Traceback")) << log;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera
