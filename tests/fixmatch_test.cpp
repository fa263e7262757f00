// The fixmatch program end to end, in-process, on a generated 10-class dataset of 8x8 images
// written as IDX files (the mnist reader): a smoke run, an exact resume and bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/fixmatch/fixmatch.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/synthetic_images.h"
#include "engine/checkpoint.h"

namespace tessera {
namespace {

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "tessera_fixmatch_" + name + "_" + std::to_string(::getpid());
  std::system(("rm -rf '" + d + "'").c_str());
  return d;
}

void put_be32(std::ofstream& f, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
  f.write(b, 4);
}

// IDX files of n synthetic 8x8 grey images with labels i % 10 (prefix "train" or "t10k").
void write_idx(const std::string& dir, const std::string& prefix, int64_t n, uint64_t seed) {
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

// A tiny dataset, made once per test binary.
const std::string& data_dir() {
  static const std::string dir = [] {
    const std::string d = temp_dir("data");
    std::system(("mkdir -p '" + d + "'").c_str());
    write_idx(d, "train", 200, 1);
    write_idx(d, "t10k", 50, 2);
    return d;
  }();
  return dir;
}

// Runs the program as main() would: its exit status.
int fixmatch(std::vector<std::string> args) {
  std::vector<std::string> all = {"fixmatch", "--data", "mnist:" + data_dir(), "--arch", "wrn-10-1", "--labels", "20",
                                  "--batch-size", "4", "--mu", "2", "--steps", "6", "--threshold", "0.1",
                                  "--eval-every", "3", "--eval-batch", "25", "--log-every", "1"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<const char*> argv;
  for (const std::string& a : all) argv.push_back(a.c_str());
  return run_program("fixmatch", [&] { return fixmatch_main(static_cast<int>(argv.size()), argv.data()); });
}

std::vector<nlohmann::json> events(const std::string& dir, const std::string& name) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == name) out.push_back(j);
  }
  return out;
}

TEST(FixMatch, SmokeRunWritesTheRunDirectory) {
  const std::string out = temp_dir("smoke");
  ASSERT_EQ(fixmatch({"--out", out}), 0);
  for (const char* f : {"config.json", "metrics.jsonl", "last.safetensors", "labeled_subset.json"})
    EXPECT_TRUE(path_exists(out + "/" + f)) << f;
  const std::vector<nlohmann::json> train = events(out, "train");
  ASSERT_EQ(train.size(), 6u);
  for (const char* k : {"sup_loss", "unsup_loss", "mask_rate", "pseudo_label_acc", "lr", "images_per_s", "data_wait"})
    EXPECT_TRUE(train[0].contains(k)) << k;
  // threshold 0.1 with 10 classes: every pseudo-label counts, so the unlabeled loss is live.
  EXPECT_DOUBLE_EQ(train[0]["mask_rate"].get<double>(), 1.0);
  EXPECT_GT(train[0]["unsup_loss"].get<double>(), 0.0);
  EXPECT_EQ(events(out, "eval").size(), 1u);  // step 3 (the end is the final event)
  const std::vector<nlohmann::json> final_ev = events(out, "final");
  ASSERT_EQ(final_ev.size(), 1u);
  EXPECT_EQ(final_ev[0]["step"], 6);
  EXPECT_TRUE(final_ev[0].contains("test_top1_teacher"));
  // The teacher is the checkpoint's unprefixed model, the student under "student.".
  const SafetensorsFile f = SafetensorsFile::read(out + "/last.safetensors");
  EXPECT_TRUE(f.has("fc.weight"));
  EXPECT_TRUE(f.has("student.fc.weight"));
  EXPECT_EQ(f.metadata("run.step"), "6");
}

TEST(FixMatch, SupervisedBaselineSkipsTheUnlabeledLoss) {
  const std::string out = temp_dir("supervised");
  ASSERT_EQ(fixmatch({"--out", out, "--lambda-u", "0", "--steps", "2", "--eval-every", "0"}), 0);
  const std::vector<nlohmann::json> train = events(out, "train");
  ASSERT_EQ(train.size(), 2u);
  EXPECT_EQ(train[0]["unsup_loss"].get<double>(), 0.0);
  EXPECT_FALSE(train[0].contains("mask_rate"));
}

// Stopping after step 3 and resuming gives bit-identical weights, optimizer state and losses.
TEST(FixMatch, ResumeIsBitIdentical) {
  const std::string whole = temp_dir("whole"), parts = temp_dir("parts");
  ASSERT_EQ(fixmatch({"--out", whole, "--smoothing", "sts", "--pseudo-labels", "teacher"}), 0);
  ASSERT_EQ(fixmatch({"--out", parts, "--smoothing", "sts", "--pseudo-labels", "teacher", "--stop-after", "3"}), 0);
  EXPECT_EQ(SafetensorsFile::read(parts + "/last.safetensors").metadata("run.step"), "3");
  ASSERT_EQ(fixmatch({"--resume", parts}), 0);

  const SafetensorsFile a = SafetensorsFile::read(whole + "/last.safetensors");
  const SafetensorsFile b = SafetensorsFile::read(parts + "/last.safetensors");
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& [name, e] : a.tensors()) {
    ASSERT_TRUE(b.has(name)) << name;
    if (e.dtype == StDType::F32)
      EXPECT_EQ(a.f32(name), b.f32(name)) << name;
    else
      EXPECT_EQ(a.i64(name), b.i64(name)) << name;
  }
  const std::vector<nlohmann::json> ta = events(whole, "train"), tb = events(parts, "train");
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i]["step"], tb[i]["step"]);
    EXPECT_EQ(ta[i]["sup_loss"], tb[i]["sup_loss"]) << "step " << ta[i]["step"];
    EXPECT_EQ(ta[i]["unsup_loss"], tb[i]["unsup_loss"]) << "step " << ta[i]["step"];
    EXPECT_EQ(ta[i]["pseudo_label_acc"], tb[i]["pseudo_label_acc"]) << "step " << ta[i]["step"];
  }
  EXPECT_EQ(events(whole, "final")[0]["test_top1_teacher"], events(parts, "final")[0]["test_top1_teacher"]);
}

TEST(FixMatch, BadInputIsRefusedAndOverwritesNothing) {
  const std::string out = temp_dir("bad");
  ASSERT_EQ(fixmatch({"--out", out, "--steps", "1", "--eval-every", "0"}), 0);
  const std::string config = read_file(out + "/config.json"), ckpt = read_file(out + "/last.safetensors");
  const std::string other = temp_dir("bad_other");
  const std::vector<std::vector<std::string>> usage = {
      {"--labels", "25"},                  // not a multiple of 10 classes
      {"--labels", "1000"},                // more than the 200 training images
      {"--threshold", "0"},   {"--threshold", "1.5"}, {"--mu", "0"},
      {"--lambda-u", "-1"},   {"--arch", "wrn-11-2"},  {"--no-such-flag", "1"},
      {"--steps", "many"},
  };
  for (const auto& args : usage) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--out", other});
    EXPECT_EQ(fixmatch(a), 2) << args[0] << " " << args[1];
    EXPECT_FALSE(path_exists(other)) << args[0] << " " << args[1];
  }
  EXPECT_EQ(fixmatch({"--out", out}), 1);  // a directory that holds a run
  EXPECT_EQ(fixmatch({"--resume", out, "--steps", "1", "--eval-every", "0", "--lr", "0.1"}), 2);  // a resumed run keeps its configuration
  EXPECT_EQ(read_file(out + "/config.json"), config);
  EXPECT_EQ(read_file(out + "/last.safetensors"), ckpt);
}

}  // namespace
}  // namespace tessera
