// build/byol end to end, in-process (apps/byol/byol.cpp): a tiny ResNet on generated 8x8
// images for a few steps. Smoke (finite, changing loss; run directory; checkpoint round trip
// through --eval-only), exact resume (stop mid-epoch, resume, bit-identical weights and
// losses), and bad input (exit codes, nothing written or overwritten).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <thread>
#include <string>
#include <vector>

#include "apps/byol/byol.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "engine/checkpoint.h"
#include "kernels/common/philox.h"

namespace tessera {
namespace {

void put_u32(std::string& s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((v >> shift) & 0xff));
}

// An MNIST-style IDX dataset of n (8 x 8) images: class c is a bright 3x3 square at one of
// ten places, on Philox noise, so there is something to learn.
void write_idx_split(const std::string& dir, const std::string& prefix, int n, uint64_t seed) {
  constexpr int kSide = 8;
  std::string images, labels;
  put_u32(images, 0x00000803);
  put_u32(images, static_cast<uint32_t>(n));
  put_u32(images, kSide);
  put_u32(images, kSide);
  put_u32(labels, 0x00000801);
  put_u32(labels, static_cast<uint32_t>(n));
  kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, 99), 0);
  for (int i = 0; i < n; ++i) {
    const int c = i % 10;
    labels.push_back(static_cast<char>(c));
    const int top = c / 5 * 4 + 1, left = c % 5;
    for (int y = 0; y < kSide; ++y)
      for (int x = 0; x < kSide; ++x) {
        const bool in_square = y >= top && y < top + 3 && x >= left && x < left + 3;
        images.push_back(static_cast<char>((in_square ? 150 : 0) + rng.next_u32() % 100));
      }
  }
  write_file_atomic(dir + "/" + prefix + "-images-idx3-ubyte", images);
  write_file_atomic(dir + "/" + prefix + "-labels-idx1-ubyte", labels);
}

struct Fixture {
  std::string root, data;
  Fixture() {
    root = ::testing::TempDir() + "tessera_byol_" + std::to_string(::getpid());
    std::system(("rm -rf '" + root + "' && mkdir -p '" + root + "/data'").c_str());
    data = root + "/data";
    write_idx_split(data, "train", 64, 1);
    write_idx_split(data, "t10k", 40, 2);
  }
  ~Fixture() { std::system(("rm -rf '" + root + "'").c_str()); }
};

const Fixture& fixture() {
  static Fixture f;
  return f;
}

// The tiny recipe: 4 steps per epoch, 2 epochs.
std::vector<std::string> tiny(const std::string& out) {
  return {"--data", "mnist:" + fixture().data, "--out", out, "--device", "cpu", "--width", "4",
          "--proj-hidden", "16", "--proj-dim", "8", "--pred-hidden", "16", "--batch-size", "16",
          "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--warmup-epochs", "1",
          "--log-every", "1", "--save-every", "3", "--eval-batch", "32", "--probe-epochs", "3",
          "--momentum", "0.9"};
}

int byol(std::vector<std::string> args) {
  std::vector<const char*> argv{"byol"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  clear_stop_request();
  return run_program("byol", [&] { return byol_main(static_cast<int>(argv.size()), argv.data()); });
}

std::vector<std::string> with(std::vector<std::string> base, std::vector<std::string> more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

std::vector<nlohmann::json> metrics(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> losses(const std::string& dir) {
  std::vector<double> out;
  for (const auto& j : metrics(dir))
    if (j["event"] == "train") out.push_back(j["loss"].get<double>());
  return out;
}

TEST(Byol, SmokeRunWritesARunAndRoundTripsItsCheckpoint) {
  const std::string out = fixture().root + "/smoke";
  ASSERT_EQ(byol(tiny(out)), 0);
  const std::vector<double> l = losses(out);
  ASSERT_EQ(l.size(), 8u);
  for (double v : l) EXPECT_TRUE(std::isfinite(v) && v >= 0 && v <= 8);
  EXPECT_NE(l.front(), l.back());
  const std::vector<nlohmann::json> m = metrics(out);
  const nlohmann::json& final_event = m.back();
  EXPECT_EQ(final_event["event"], "final");
  EXPECT_EQ(final_event["step"], 8);
  for (const char* k : {"linear_top1_teacher", "knn_top1_teacher", "linear_top1_student", "knn_top1_student"}) {
    ASSERT_TRUE(final_event.contains(k)) << k;
    EXPECT_GE(final_event[k].get<double>(), 0);
  }
  const nlohmann::json config = nlohmann::json::parse(read_file(out + "/config.json"));
  EXPECT_EQ(config["width"], 4);
  EXPECT_EQ(config["smoothing"], "sts");
  EXPECT_EQ(config["preserve-prob"], 0.7);

  // The backbone file holds exactly the teacher backbone, under the names of the checkpoint.
  const SafetensorsFile ckpt = SafetensorsFile::read(out + "/last.safetensors");
  const SafetensorsFile backbone = SafetensorsFile::read(out + "/backbone.safetensors");
  EXPECT_EQ(ckpt.metadata("run.step"), "8");
  for (const auto& kv : backbone.tensors()) {
    ASSERT_TRUE(ckpt.has(kv.first)) << kv.first;
    if (kv.second.dtype == StDType::F32) {
      EXPECT_EQ(backbone.f32(kv.first), ckpt.f32(kv.first)) << kv.first;
    }
  }
  EXPECT_TRUE(backbone.has("conv1.weight"));
  EXPECT_TRUE(backbone.has("layer4.1.bn2.running_var"));

  // Round trip: evaluating the saved run gives exactly the numbers the run reported.
  ASSERT_EQ(byol({"--resume", out, "--eval-only"}), 0);
  const nlohmann::json again = metrics(out).back();
  EXPECT_EQ(again["event"], "final");
  EXPECT_EQ(again["linear_top1_teacher"], final_event["linear_top1_teacher"]);
  EXPECT_EQ(again["knn_top1_student"], final_event["knn_top1_student"]);
  EXPECT_EQ(losses(out), l);  // the training events are kept, the old final line replaced
}

TEST(Byol, ResumeIsBitIdentical) {
  const std::string whole = fixture().root + "/whole", parts = fixture().root + "/parts";
  ASSERT_EQ(byol(tiny(whole)), 0);
  // Stop inside the first epoch (step 3 of 4), then once more inside the second.
  ASSERT_EQ(byol(with(tiny(parts), {"--stop-after", "3"})), 0);
  EXPECT_EQ(SafetensorsFile::read(parts + "/last.safetensors").metadata("run.step"), "3");
  EXPECT_EQ(losses(parts).size(), 3u);
  ASSERT_EQ(byol({"--resume", parts, "--stop-after", "6"}), 0);
  ASSERT_EQ(byol({"--resume", parts + "/last.safetensors"}), 0);

  EXPECT_EQ(losses(parts), losses(whole));
  const SafetensorsFile a = SafetensorsFile::read(whole + "/last.safetensors");
  const SafetensorsFile b = SafetensorsFile::read(parts + "/last.safetensors");
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& kv : a.tensors()) {
    ASSERT_TRUE(b.has(kv.first)) << kv.first;
    if (kv.second.dtype == StDType::F32) {
      EXPECT_EQ(a.f32(kv.first), b.f32(kv.first)) << kv.first;
    }
    if (kv.second.dtype == StDType::I64) {
      EXPECT_EQ(a.i64(kv.first), b.i64(kv.first)) << kv.first;
    }
  }
  EXPECT_EQ(metrics(parts).back()["linear_top1_teacher"], metrics(whole).back()["linear_top1_teacher"]);
}

TEST(Byol, CtrlCSavesACheckpointAndExitsCleanly) {
  const std::string out = fixture().root + "/interrupted";
  // A watcher sends SIGINT to this process once two steps are logged; the run must finish
  // its step, save, and return 0 long before its 80 steps are done.
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      std::ifstream in(out + "/metrics.jsonl");
      int lines = 0;
      for (std::string line; std::getline(in, line);) ++lines;
      if (lines >= 2) {
        ::kill(::getpid(), SIGINT);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const int rc = byol(with(tiny(out), {"--epochs", "20", "--save-every", "1000"}));
  done = true;
  watcher.join();
  ASSERT_EQ(rc, 0);
  const SafetensorsFile ckpt = SafetensorsFile::read(out + "/last.safetensors");
  const int64_t step = std::stoll(ckpt.metadata("run.step"));
  EXPECT_GE(step, 2);
  EXPECT_LT(step, 80);
  EXPECT_EQ(static_cast<int64_t>(losses(out).size()), step);
  EXPECT_NE(metrics(out).back()["event"], "final");
  ASSERT_EQ(byol({"--resume", out, "--stop-after", std::to_string(step + 1)}), 0);
  EXPECT_EQ(static_cast<int64_t>(losses(out).size()), step + 1);
  clear_stop_request();
}

TEST(Byol, BadInputExitsWithTheRightCodeAndWritesNothing) {
  const std::string root = fixture().root;
  EXPECT_EQ(byol(with(tiny(root + "/bad1"), {"--learning-rate", "0.1"})), 2);
  EXPECT_EQ(byol(with(tiny(root + "/bad2"), {"--lr", "-0.1"})), 2);
  EXPECT_EQ(byol(with(tiny(root + "/bad3"), {"--preserve-prob", "1.5"})), 2);
  EXPECT_EQ(byol(with(tiny(root + "/bad4"), {"--batch-size", "65"})), 2);  // 64 images
  EXPECT_EQ(byol(with(tiny(root + "/bad5"), {"--data", "mnist:" + root + "/nowhere"})), 1);
  EXPECT_EQ(byol(with(tiny(root + "/bad6"), {"--eval-only"})), 2);
  for (const char* d : {"/bad1", "/bad2", "/bad3", "/bad4", "/bad5", "/bad6"})
    EXPECT_FALSE(path_exists(root + d)) << d << " was created by a failed run";

  // A finished run is neither overwritten by a new one nor resumed as another architecture.
  const std::string run = root + "/kept";
  ASSERT_EQ(byol(with(tiny(run), {"--stop-after", "2"})), 0);
  const std::string before = read_file(run + "/last.safetensors");
  const std::string metrics_before = read_file(run + "/metrics.jsonl");
  EXPECT_EQ(byol(tiny(run)), 1);
  EXPECT_EQ(byol({"--resume", run, "--arch", "resnet34"}), 2);
  EXPECT_EQ(byol({"--resume", run, "--width", "8"}), 2);
  EXPECT_EQ(byol({"--resume", root + "/absent"}), 1);
  EXPECT_EQ(read_file(run + "/last.safetensors"), before);
  EXPECT_EQ(read_file(run + "/metrics.jsonl"), metrics_before);
}

}  // namespace
}  // namespace tessera
