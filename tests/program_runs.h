// What the byol and fixmatch tests need to compare two runs of a training program: run the
// built program in a process of its own, and compare two run directories - every checkpoint
// tensor, every checkpoint metadata entry, every metrics event - except what may differ
// between an uninterrupted run and a stopped-and-resumed one (timings, and the flags that
// belong to one invocation, such as --out and --stop-after).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/run_directory.h"
#include "data/synthetic_images.h"
#include "engine/checkpoint.h"

namespace tessera::program_runs {

// An IDX split (the mnist reader's files PREFIX-images-idx3-ubyte and PREFIX-labels-idx1-ubyte)
// of n synthetic 8 x 8 grey images with labels i % 10: the data of the tiny program runs.
inline void write_synthetic_idx(const std::string& dir, const std::string& prefix, int64_t n, uint64_t seed) {
  auto put_be32 = [](std::ofstream& f, uint32_t v) {
    const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
    f.write(b, 4);
  };
  const std::vector<uint8_t> images = data::synthetic_images(n, 1, 8, 8, seed);
  std::ofstream fi(dir + "/" + prefix + "-images-idx3-ubyte", std::ios::binary);
  put_be32(fi, 0x00000803);
  put_be32(fi, static_cast<uint32_t>(n));
  put_be32(fi, 8);
  put_be32(fi, 8);
  fi.write(reinterpret_cast<const char*>(images.data()), static_cast<std::streamsize>(images.size()));
  std::ofstream fl(dir + "/" + prefix + "-labels-idx1-ubyte", std::ios::binary);
  put_be32(fl, 0x00000801);
  put_be32(fl, static_cast<uint32_t>(n));
  for (int64_t i = 0; i < n; ++i) fl.put(static_cast<char>(i % 10));
}

// A temporary folder `root` whose `data` subfolder holds a synthetic split (train-* with
// `train_n` images, t10k-* with `test_n`), made on construction and removed with the object.
struct SyntheticData {
  std::string root, data;
  SyntheticData(const std::string& name, int64_t train_n, uint64_t train_seed, int64_t test_n, uint64_t test_seed)
      : root(::testing::TempDir() + "tessera_" + name + "_" + std::to_string(::getpid())), data(root + "/data") {
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(data);
    write_synthetic_idx(data, "train", train_n, train_seed);
    write_synthetic_idx(data, "t10k", test_n, test_seed);
  }
  ~SyntheticData() { std::filesystem::remove_all(root); }
  SyntheticData(const SyntheticData&) = delete;
  SyntheticData& operator=(const SyntheticData&) = delete;
};

// A program's common flags followed by one test's.
inline std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

struct Result {
  int status = -1;     // exit code, or -1 when the program did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs a shell command: its exit code and its stdout and stderr together.
inline Result run_command(const std::string& command) {
  Result r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs PROGRAM (built next to this test binary, as tests/app_flags_test.cpp does) with `args`,
// in a fresh process that inherits this one's environment (OMP_NUM_THREADS included, so
// CPU results are comparable bit for bit with other runs of the built program).
// `env` adds NAME=VALUE settings for that process only (e.g. LD_PRELOAD for the fault shim).
inline Result run(const std::string& program, const std::vector<std::string>& args,
                  const std::vector<std::string>& env = {}) {
  namespace fs = std::filesystem;
  const fs::path binary = fs::read_symlink("/proc/self/exe").parent_path() / program;
  Result r;
  if (!fs::exists(binary)) {
    r.output = binary.string() + " not found: build the programs with the tests (make all)";
    return r;
  }
  std::string command;
  if (!env.empty()) command = "env ";
  for (const std::string& e : env) command += "'" + e + "' ";
  command += "'" + binary.string() + "'";
  for (const std::string& a : args) command += " '" + a + "'";  // test paths hold no quotes
  return run_command(command);
}

inline std::vector<nlohmann::json> events(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    for (const char* k : {"images_per_s", "data_wait", "wall_s"}) j.erase(k);  // the machine's, not the run's
    out.push_back(std::move(j));
  }
  return out;
}

// The configuration a checkpoint records, without the flags of one invocation.
inline nlohmann::json computation_config(const SafetensorsFile& f) {
  nlohmann::json c = nlohmann::json::parse(f.metadata("run.config"));
  for (auto it = c.begin(); it != c.end();)
    it = per_invocation(it.key()) ? c.erase(it) : std::next(it);
  return c;
}

// Checkpoints `a` and `b` hold the same state: every tensor bit for bit, every metadata entry
// (optimizer step counters, smoother state, model specs, run.step) but the configuration,
// which must agree on every flag that changes the computation, and on the rest but
// `flags_that_differ` (flags the caller claims change nothing the checkpoint holds).
inline void expect_same_checkpoint(const std::string& a, const std::string& b,
                                   const std::vector<std::string>& flags_that_differ = {}) {
  const SafetensorsFile fa = SafetensorsFile::read(a);
  const SafetensorsFile fb = SafetensorsFile::read(b);
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& [name, e] : fa.tensors()) {
    ASSERT_TRUE(fb.has(name)) << name;
    switch (e.dtype) {
      case StDType::F32: EXPECT_EQ(fa.f32(name), fb.f32(name)) << name; break;
      case StDType::I64: EXPECT_EQ(fa.i64(name), fb.i64(name)) << name; break;
      case StDType::I32: EXPECT_EQ(fa.i32(name), fb.i32(name)) << name; break;
      case StDType::U8: EXPECT_EQ(fa.u8(name), fb.u8(name)) << name; break;
    }
  }
  for (const auto& [key, value] : fa.metadata()) {
    if (key == "run.config") continue;
    ASSERT_TRUE(fb.metadata().count(key)) << "metadata '" << key << "' missing from " << b;
    EXPECT_EQ(fb.metadata(key), value) << "metadata '" << key << "'";
  }
  EXPECT_EQ(fa.metadata().size(), fb.metadata().size());
  nlohmann::json ca = computation_config(fa), cb = computation_config(fb);
  for (const std::string& flag : flags_that_differ) {
    EXPECT_TRUE(ca.contains(flag)) << "no flag '" << flag << "' in " << a << "'s configuration";
    ca.erase(flag);
    cb.erase(flag);
  }
  EXPECT_EQ(ca, cb);
}

// Run directories `a` (uninterrupted) and `b` (stopped and resumed) hold the same run: the
// same checkpoint, and the same metrics events in the same order, timings aside.
inline void expect_same_run(const std::string& a, const std::string& b) {
  expect_same_checkpoint(a + "/last.safetensors", b + "/last.safetensors");
  const std::vector<nlohmann::json> ea = events(a), eb = events(b);
  EXPECT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < std::min(ea.size(), eb.size()); ++i) EXPECT_EQ(ea[i], eb[i]) << "metrics line " << i + 1;
}

}  // namespace tessera::program_runs
