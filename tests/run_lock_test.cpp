// One process per run directory (apps/run/run_lock.h):
//
//   unit      a second lock on a held directory is refused naming the holder's pid and host;
//             a lock left by a process killed with SIGKILL is stale and taken over, naming
//             the dead holder; release removes the file
//   programs  build/byol running in DIR: a second byol with --out DIR or --resume DIR exits 1
//             naming DIR and the holder's pid; after kill -9 of the first, --resume DIR takes
//             the stale lock over, says so, finishes and leaves no lock behind
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "apps/run/run_lock.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "tests/program_runs.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "tessera_lock_" + std::to_string(::getpid()) + "_" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string file_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(RunLock, SecondLockIsRefusedNamingTheHolder) {
  const std::string d = fresh_dir("second");
  RunLock first = RunLock::acquire(d);
  ASSERT_TRUE(first.held());
  EXPECT_EQ(file_text(d + "/run.lock"), this_process() + "\n");
  try {
    RunLock::acquire(d);  // flock conflicts between two open files, even in one process
    FAIL() << "second lock taken";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'" + d + "' is in use by another run (" + this_process()), std::string::npos) << m;
  }
  first.release();
  EXPECT_FALSE(fs::exists(d + "/run.lock"));
  std::string stale = "x";
  RunLock again = RunLock::acquire(d, &stale);
  EXPECT_TRUE(again.held());
  EXPECT_EQ(stale, "");  // a clean release leaves nothing stale
  fs::remove_all(d);
}

TEST(RunLock, LockOfAKilledProcessIsTakenOver) {
  const std::string d = fresh_dir("stale");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RunLock held = RunLock::acquire(d);
    ::raise(SIGKILL);  // dies holding it: no destructor, the file stays
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  ASSERT_TRUE(fs::exists(d + "/run.lock"));
  std::string stale;
  RunLock lock = RunLock::acquire(d, &stale);
  EXPECT_TRUE(lock.held());
  EXPECT_NE(stale.find("pid " + std::to_string(child) + " on host "), std::string::npos) << stale;
  EXPECT_EQ(file_text(d + "/run.lock"), this_process() + "\n");
  lock.release();
  fs::remove_all(d);
}

// A stale file is read up to its last line break or NUL padding, and rewritten whole: a holder
// text longer than this process's leaves no tail behind.
TEST(RunLock, StaleTextIsTrimmedAndReplacedWhole) {
  const std::string d = fresh_dir("long");
  const std::string gone = "pid 4000000 on host " + std::string(100, 'h');  // longer than any host name
  {
    std::ofstream f(d + "/run.lock", std::ios::binary);
    f << gone << '\n' << '\0' << '\0';
  }
  std::string stale;
  RunLock lock = RunLock::acquire(d, &stale);
  EXPECT_EQ(stale, gone);
  EXPECT_EQ(file_text(d + "/run.lock"), this_process() + "\n");
  lock.release();
  fs::remove_all(d);
}

// Locked but still empty: a holder between its flock and its write. The refusal says so.
TEST(RunLock, EmptyLockedFileIsAProcessStartingUp) {
  const std::string d = fresh_dir("empty");
  const int fd = ::open((d + "/run.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  try {
    RunLock::acquire(d);
    ADD_FAILURE() << "a locked file was taken";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'" + d + "' is in use by another run (a process starting up, " + d + "/run.lock)"),
              std::string::npos)
        << m;
  }
  ::close(fd);
  fs::remove_all(d);
}

// A released lock stays released: releasing it again (or destroying it) must not remove the
// file of whoever holds the directory now. Moves hand the lock over; assigning over a lock
// releases the one it held.
TEST(RunLock, ReleaseOnceAndMovesHandTheLockOver) {
  const std::string d = fresh_dir("moves"), d2 = fresh_dir("moves2");
  RunLock a = RunLock::acquire(d);
  a.release();
  RunLock b = RunLock::acquire(d);
  a.release();
  EXPECT_TRUE(fs::exists(d + "/run.lock"));
  EXPECT_THROW(RunLock::acquire(d), Error);

  RunLock c = std::move(b);
  EXPECT_FALSE(b.held());
  EXPECT_TRUE(c.held());
  { RunLock gone = std::move(b); }  // an empty lock's destructor releases nothing
  EXPECT_TRUE(fs::exists(d + "/run.lock"));

  RunLock e = RunLock::acquire(d2);
  e = std::move(c);
  EXPECT_FALSE(c.held());
  EXPECT_FALSE(fs::exists(d2 + "/run.lock")) << "the lock e held was not released";
  EXPECT_NO_THROW(RunLock::acquire(d2));
  EXPECT_TRUE(e.held());
  EXPECT_THROW(RunLock::acquire(d), Error);
  e.release();
  EXPECT_FALSE(fs::exists(d + "/run.lock"));
  fs::remove_all(d);
  fs::remove_all(d2);
}

// build/byol in a process of its own, not waited for: its pid.
pid_t start(const std::vector<std::string>& args) {
  const std::string binary = (fs::read_symlink("/proc/self/exe").parent_path() / "byol").string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const std::string log = args[3] + ".log";  // --out DIR (args[3]): its output beside it
    if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) ::_exit(126);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

TEST(RunLockPrograms, SecondRunIsRefusedAndAKilledRunsLockTakenOver) {
  const std::string root = fresh_dir("programs");
  program_runs::write_synthetic_idx(root, "train", 64, 1);
  program_runs::write_synthetic_idx(root, "t10k", 40, 2);
  const std::string dir = root + "/run";
  // A tiny BYOL long enough to be caught running (thousands of steps), a checkpoint every step.
  const std::vector<std::string> args = {"--data", "mnist:" + root, "--out", dir, "--device", "cpu", "--width", "4",
                                         "--proj-hidden", "16", "--proj-dim", "8", "--pred-hidden", "16",
                                         "--batch-size", "16", "--epochs", "2000", "--optimizer", "sgd", "--lr",
                                         "0.05", "--save-every", "1", "--log-every", "50", "--knn-every", "0",
                                         "--eval-batch", "32", "--probe-epochs", "1"};
  const pid_t first = start(args);
  ASSERT_GT(first, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(dir + "/last.safetensors") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(dir + "/last.safetensors")) << file_text(dir + ".log");
  const std::string holder = "pid " + std::to_string(first) + " on host ";

  const program_runs::Result again = program_runs::run("byol", args);
  EXPECT_EQ(again.status, 1) << again.output;
  EXPECT_NE(again.output.find("'" + dir + "' is in use by another run (" + holder), std::string::npos) << again.output;
  const program_runs::Result resumed = program_runs::run("byol", {"--resume", dir, "--stop-after", "100000"});
  EXPECT_EQ(resumed.status, 1) << resumed.output;
  EXPECT_NE(resumed.output.find("is in use by another run (" + holder), std::string::npos) << resumed.output;

  ASSERT_EQ(::kill(first, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(first, &status, 0), first);
  ASSERT_TRUE(fs::exists(dir + "/run.lock"));  // left behind by kill -9
  const int64_t at = std::stoll(SafetensorsFile::read(dir + "/last.safetensors").metadata("run.step"));
  const program_runs::Result taken =
      program_runs::run("byol", {"--resume", dir, "--stop-after", std::to_string(at + 1)});
  EXPECT_EQ(taken.status, 0) << taken.output;
  EXPECT_NE(taken.output.find("took over the lock of a run that is no longer running (" + holder), std::string::npos)
      << taken.output;
  EXPECT_FALSE(fs::exists(dir + "/run.lock"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace tessera
