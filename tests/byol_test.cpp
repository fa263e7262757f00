// build/byol end to end on a tiny ResNet and generated 8x8 images, a few steps at a time.
//
//   smoke     a run directory, a checkpoint that round-trips through --eval-only, a loss that
//             falls well below that of a frozen control run on the very same batches, and
//             evaluation scores far above chance
//   teacher   the smoothing the program applies, replayed on the host from consecutive
//             checkpoints: rule, part seed, step index, cosine m_k, order (the teacher moves
//             at the start of step k towards the student of step k - 1), BN buffers
//   resume    stopped and resumed by the built program in fresh processes: tensors, checkpoint
//             metadata and every metrics event equal the uninterrupted run's
//   kNN       the --knn-every monitor's teacher and student scores are --eval-only's for
//             that step's checkpoint, each under its own name
//   Ctrl-C and bad input: exit codes, nothing written or overwritten
//
// Most runs are in-process (byol_main); the resume test runs build-cpu/byol, next to this
// test binary, so that nothing a process keeps between runs can stand in for saved state.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "apps/byol/byol.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/checkpoint.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "tests/program_runs.h"
#include "tests/teacher_replay.h"

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
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(root + "/data");
    data = root + "/data";
    write_idx_split(data, "train", 64, 1);
    write_idx_split(data, "t10k", 40, 2);
  }
  ~Fixture() {
    std::error_code ignored;  // a destructor must not throw: what is left is in the temp dir
    std::filesystem::remove_all(root, ignored);
  }
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

using program_runs::with;

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

// A test-set score of the final event: a whole number of the fixture's 40 test images, in
// percent (so a score computed over the wrong count, or not a fraction at all, shows).
bool is_score_of_40(double percent) {
  const double images = percent * 40.0 / 100.0;
  return percent >= 0 && percent <= 100 && std::fabs(images - std::round(images)) < 1e-9;
}

double mean_of(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return sum / static_cast<double>(end - begin);
}

// The kNN monitor at an epoch's end (--knn-every) scores the teacher and the student under
// their own names: the same numbers --eval-only gives for the checkpoint of that step.
TEST(Byol, KnnMonitorNamesTeacherAndStudentScores) {
  const std::string out = fixture().root + "/knn_monitor";
  ASSERT_EQ(byol(with(tiny(out), {"--knn-every", "1", "--stop-after", "4"})), 0);  // 4 steps: one epoch
  nlohmann::json monitor;
  for (const nlohmann::json& e : metrics(out))
    if (e["event"] == "knn") monitor = e;
  ASSERT_FALSE(monitor.is_null()) << "no knn event at the end of epoch 1";
  EXPECT_EQ(monitor["step"], 4);
  ASSERT_EQ(byol({"--resume", out, "--eval-only"}), 0);
  const nlohmann::json evaluated = metrics(out).back();
  ASSERT_EQ(evaluated["event"], "final");
  EXPECT_EQ(monitor["knn_top1_teacher"], evaluated["knn_top1_teacher"]);
  EXPECT_EQ(monitor["knn_top1_student"], evaluated["knn_top1_student"]);
  // Otherwise a swap of the two would pass.
  EXPECT_NE(evaluated["knn_top1_teacher"], evaluated["knn_top1_student"]);
}

// The kNN monitor runs between steps in the training step's workspace (apps/byol/byol.cpp) and
// must change nothing the training reads: the run with it has the losses and the checkpoint of
// the run without, bit for bit (7 steps: the monitor at step 4, no final evaluation).
TEST(Byol, KnnMonitorLeavesTrainingUnchanged) {
  const std::string monitored = fixture().root + "/knn_between", plain = fixture().root + "/knn_none";
  ASSERT_EQ(byol(with(tiny(monitored), {"--knn-every", "1", "--stop-after", "7"})), 0);
  ASSERT_EQ(byol(with(tiny(plain), {"--stop-after", "7"})), 0);
  int monitors = 0;
  for (const nlohmann::json& e : metrics(monitored)) monitors += e["event"] == "knn";
  ASSERT_EQ(monitors, 1);
  const std::vector<double> a = losses(monitored), b = losses(plain);
  ASSERT_EQ(a.size(), 7u);
  EXPECT_EQ(a, b);
  program_runs::expect_same_checkpoint(monitored + "/last.safetensors", plain + "/last.safetensors", {"knn-every"});
}

TEST(Byol, SmokeRunWritesARunAndRoundTripsItsCheckpoint) {
  const std::string out = fixture().root + "/smoke", frozen = fixture().root + "/frozen";
  ASSERT_EQ(byol(tiny(out)), 0);
  // The control: the same run with lr 1e-9, stopped before the final evaluation. Same seed, so
  // the same batches, augmentations, initial weights and teacher masks: only the learning
  // differs (the flags refuse lr 0; 1e-9 moves no weight by a measurable amount in 7 steps).
  ASSERT_EQ(byol(with(tiny(frozen), {"--lr", "1e-9", "--stop-after", "7"})), 0);
  const std::vector<double> l = losses(out), c = losses(frozen);
  ASSERT_EQ(l.size(), 8u);
  ASSERT_EQ(c.size(), 7u);
  // Step 0's loss comes before any optimizer step, so the learning rate cannot touch it.
  EXPECT_EQ(l[0], c[0]);
  // Over steps 5-7 the trained run sits far below the control on the same batches: measured
  // 1.78 against 3.67 (both start at 4.02). A margin of 1.0 leaves room
  // for harmless changes of rounding and fails when the update does not reach the weights
  // (lr ignored, gradients lost, a sign flipped).
  const double trained = mean_of(l, 4, 7), control = mean_of(c, 4, 7);
  EXPECT_LT(trained, control - 1.0) << "steps 5-7: trained " << trained << ", frozen control " << control;
  for (double v : l) EXPECT_TRUE(std::isfinite(v));
  const std::vector<nlohmann::json> m = metrics(out);
  const nlohmann::json& final_event = m.back();
  EXPECT_EQ(final_event["event"], "final");
  EXPECT_EQ(final_event["step"], 8);
  // The fixture's classes are bright squares at ten places: the backbones here separate them
  // far above the 10% of chance (measured 67.5-80%; a random-initialised one scored 60% on
  // data of this kind), so 30% fails only when the evaluation itself is broken (labels out
  // of step with features, a probe that does not train, features that are all zero).
  for (const char* k : {"linear_top1_teacher", "knn_top1_teacher", "linear_top1_student", "knn_top1_student"}) {
    ASSERT_TRUE(final_event.contains(k)) << k;
    const double v = final_event[k].get<double>();
    EXPECT_TRUE(is_score_of_40(v)) << k << " = " << v;
    EXPECT_GE(v, 30.0) << k;
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

// ---- the teacher, replayed -------------------------------------------------------------------

// The run the replay checks: 8 steps (so m_k follows the cosine over K = 8), STS over channel
// fragments, the teacher's own BN statistics (the default), a seed other than the default,
// and the augmentation flags spelled out because the BN replay below rebuilds the loader.
constexpr uint64_t kReplaySeed = 7;
constexpr int64_t kReplaySteps = 8;
constexpr float kReplayM0 = 0.9f, kReplayP = 0.7f;

std::vector<std::string> replay_recipe(const std::string& out) {
  return with(tiny(out), {"--seed", "7", "--smoothing", "sts", "--preserve-prob", "0.7", "--granularity", "channel",
                          "--momentum-schedule", "cosine", "--bn-buffers", "own", "--crop-size", "8",
                          "--crop-scale-min", "0.5", "--blur-prob-1", "1", "--blur-prob-2", "0.1",
                          "--solarize-prob-1", "0", "--solarize-prob-2", "0.2"});
}

data::AugmentOptions replay_augment_options() {
  data::AugmentOptions a;
  a.out_size = 8;
  a.crop_scale_lo = 0.5f;
  a.blur_prob[0] = 1.0f;
  a.blur_prob[1] = 0.1f;
  a.solarize_prob[0] = 0.0f;
  a.solarize_prob[1] = 0.2f;
  return a;
}

// Copies `values` (per tensor name) into the model's parameters.
void set_params(Model& m, const std::map<std::string, std::vector<float>>& values) {
  for (size_t k = 0; k < m.param_table().size(); ++k) from_host(m.params().slot(k), values.at(m.param_table()[k].name));
}

// The model's BN buffers equal the checkpoint's under `prefix`, bit for bit (num_batches_tracked
// is a float in the arena and an int64 in the file).
void expect_buffers_equal(const Model& m, const SafetensorsFile& f, const std::string& prefix, const std::string& what) {
  for (size_t k = 0; k < m.buffer_table().size(); ++k) {
    const std::string name = prefix + m.buffer_table()[k].name;
    const std::vector<float> mine = to_host_f32(m.buffers().slot(k));
    if (f.entry(name).dtype == StDType::I64) {
      const std::vector<int64_t> theirs = f.i64(name);
      ASSERT_EQ(theirs.size(), mine.size()) << name;
      for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(static_cast<int64_t>(mine[i]), theirs[i]) << what << ": " << name;
      continue;
    }
    const std::vector<float> theirs = f.f32(name);
    ASSERT_EQ(theirs.size(), mine.size()) << name;
    for (size_t i = 0; i < mine.size(); ++i)
      if (!replay::same_bits(mine[i], theirs[i])) {
        ADD_FAILURE() << what << ": " << name << "[" << i << "] is " << theirs[i] << ", the replay gives " << mine[i];
        break;
      }
  }
}

// Checkpoints after steps 1..4 of one run (each from a fresh run stopped there: the run is
// deterministic, so they are the uninterrupted run's, whatever resume does). Between
// checkpoints s and s + 1 the program ran step index s, which begins with the teacher update
//   teacher <- rule(teacher, student, step s, m_s)   (student: as optimizer step s - 1 left it)
// and then forwards both views through the teacher in train mode, which is all that moves its
// BN statistics under --bn-buffers own. The test recomputes both and demands equal bits.
TEST(Byol, TeacherUpdatesReplayFromConsecutiveCheckpoints) {
  constexpr int kLast = 4;
  std::vector<SafetensorsFile> after;  // after[s]: the checkpoint after s steps
  after.emplace_back();                // (step 0 has none; the replay starts at step 1)
  for (int s = 1; s <= kLast; ++s) {
    const std::string out = fixture().root + "/replay_" + std::to_string(s);
    ASSERT_EQ(byol(with(replay_recipe(out), {"--stop-after", std::to_string(s)})), 0);
    after.push_back(SafetensorsFile::read(out + "/last.safetensors"));
    ASSERT_EQ(after.back().metadata("run.step"), std::to_string(s));
    // The metrics line of step s reports the momentum of step index s - 1.
    const nlohmann::json line = metrics(out).back();
    ASSERT_EQ(line["event"], "train");
    ASSERT_EQ(line["step"], s);
    EXPECT_EQ(static_cast<float>(line["momentum"].get<double>()), replay::cosine_momentum(kReplayM0, s - 1, kReplaySteps));
  }
  // byol's parts: program 1, parts 3 (teacher backbone masks) and 4 (teacher projector masks).
  const uint64_t backbone_seed = replay::program_part_seed(kReplaySeed, 1, 3);
  const uint64_t projector_seed = replay::program_part_seed(kReplaySeed, 1, 4);
  EXPECT_EQ(after[1].metadata("backbone.smoothing.seed"), std::to_string(backbone_seed));
  EXPECT_EQ(after[1].metadata("projector.smoothing.seed"), std::to_string(projector_seed));

  // The teacher's models, for their tables and for the BN replay.
  std::unique_ptr<Model> backbone = make_model(model_spec_from(after[1], ""), Device::CPU, false);
  std::unique_ptr<Model> projector = make_model(model_spec_from(after[1], "teacher.projector."), Device::CPU, false);
  const data::Dataset train = data::load_dataset(data::parse_data_spec("mnist:" + fixture().data), data::Split::Train);
  data::AugmentTransform augment(data::Recipe::Byol, train, Device::CPU, replay_augment_options());

  replay::ReplayCounts counts;
  for (int s = 1; s < kLast; ++s) {
    const SafetensorsFile &before = after[static_cast<size_t>(s)], &next = after[static_cast<size_t>(s) + 1];
    const std::string what = "teacher after step index " + std::to_string(s);
    const float m = replay::cosine_momentum(kReplayM0, s, kReplaySteps);
    const auto want_backbone = replay::replay_update(backbone->param_table(), before, "", before, "student.backbone.",
                                                     {backbone_seed, s, kReplayP, m, replay::Fragments::Channel}, &counts);
    const auto want_projector =
        replay::replay_update(projector->param_table(), before, "teacher.projector.", before, "student.projector.",
                              {projector_seed, s, kReplayP, m, replay::Fragments::Channel}, &counts);
    replay::expect_same_tensors(want_backbone, next, "", what + " (backbone)");
    replay::expect_same_tensors(want_projector, next, "teacher.projector.", what + " (projector)");
    EXPECT_EQ(next.metadata("backbone.smoothing.step"), std::to_string(s + 1));
    EXPECT_EQ(next.metadata("projector.smoothing.step"), std::to_string(s + 1));

    // BN statistics: the smoother leaves them (own); the two teacher forwards of step s, with
    // the updated weights, on the batch the loader gives at the position `before` saved.
    // (After step 0 the teacher's statistics still equal the student's - same weights, same
    // views - so a smoother that copied them would pass at step index 1; it fails from 2 on.)
    load_model(before, *backbone, "", /*allow_unexpected=*/true);
    load_model(before, *projector, "teacher.projector.");
    set_params(*backbone, want_backbone);
    set_params(*projector, want_projector);
    auto loader = data::make_byol_loader(train, 16, augment, augment, kReplaySeed, Device::CPU,
                                         data::LoaderPosition::unpack(before.i64("run.loader")));
    const data::Batch& batch = loader->next();
    Workspace ws(Device::CPU);
    Graph g(ws);
    NoGradScope no_grad(g);
    for (int v = 0; v < 2; ++v)
      projector->features(g, backbone->features(g, g.input(batch.views[static_cast<size_t>(v)], "view"), true), true);
    g.clear();  // adds the forwards' num_batches_tracked counts (Graph::count_batch)
    expect_buffers_equal(*backbone, next, "", what + " (backbone BN buffers)");
    expect_buffers_equal(*projector, next, "teacher.projector.", what + " (projector BN buffers)");
  }
  // The replay could have failed: fragments were kept whose blend would have changed them,
  // and updated fragments changed.
  EXPECT_GT(counts.kept_fragments, 0);
  EXPECT_GT(counts.updated_fragments, 0);
  EXPECT_GT(counts.telling_keeps, 0);
  EXPECT_GT(counts.telling_updates, 0);
}

// ---- resume --------------------------------------------------------------------------------

// The built program, stopped at step 3 (inside the first epoch) and at step 6 (inside the
// second), each part in a fresh process: the same tensors, checkpoint metadata (optimizer
// step counters, smoother state) and metrics events as the uninterrupted run. A resume that
// stops at once rewrites the checkpoint it started from: state that is not restored but
// would be rebuilt by the next step (the smoother's step count) shows there.
TEST(Byol, ResumeInAFreshProcessIsBitIdentical) {
  const std::string whole = fixture().root + "/whole", parts = fixture().root + "/parts";
  auto run = [](const std::vector<std::string>& args) {
    const program_runs::Result r = program_runs::run("byol", args);
    EXPECT_EQ(r.status, 0) << r.output;
    return r.status;
  };
  ASSERT_EQ(run(tiny(whole)), 0);
  ASSERT_EQ(run(with(tiny(parts), {"--stop-after", "3"})), 0);
  EXPECT_EQ(losses(parts).size(), 3u);
  const std::string at3 = fixture().root + "/parts_at_3.safetensors";
  std::filesystem::copy_file(parts + "/last.safetensors", at3);
  ASSERT_EQ(run({"--resume", parts, "--stop-after", "3"}), 0);
  program_runs::expect_same_checkpoint(at3, parts + "/last.safetensors");
  // The counters the checkpoint records are the steps taken.
  const SafetensorsFile f3 = SafetensorsFile::read(at3);
  EXPECT_EQ(f3.metadata("run.step"), "3");
  for (const char* key : {"optim.backbone.optim.steps", "optim.projector.optim.steps", "optim.predictor.optim.steps",
                          "backbone.smoothing.step", "projector.smoothing.step"}) {
    ASSERT_TRUE(f3.metadata().count(key)) << "the checkpoint does not record " << key;
    EXPECT_EQ(f3.metadata(key), "3") << key;
  }

  ASSERT_EQ(run({"--resume", parts, "--stop-after", "6"}), 0);
  ASSERT_EQ(run({"--resume", parts + "/last.safetensors"}), 0);
  program_runs::expect_same_run(whole, parts);
  EXPECT_EQ(metrics(parts).back()["event"], "final");
}

// --stop-after off the logging cadence writes no extra line: the stopped and resumed run logs
// the steps the uninterrupted one does.
TEST(Byol, AStopOffTheLoggingCadenceLogsTheUninterruptedSteps) {
  const std::string whole = fixture().root + "/cadence_whole", parts = fixture().root + "/cadence_parts";
  auto logged = [](const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& j : metrics(dir)) out.push_back(j["event"].get<std::string>() + " " + std::to_string(j.value("step", -1)));
    return out;
  };
  ASSERT_EQ(byol(with(tiny(whole), {"--log-every", "2", "--stop-after", "4"})), 0);
  ASSERT_EQ(byol(with(tiny(parts), {"--log-every", "2", "--stop-after", "3"})), 0);
  ASSERT_EQ(byol({"--resume", parts, "--stop-after", "4"}), 0);
  EXPECT_EQ(logged(parts), logged(whole));
  EXPECT_EQ(logged(whole), (std::vector<std::string>{"teacher 2", "train 2", "teacher 4", "train 4"}));
}

TEST(Byol, CtrlCSavesACheckpointAndExitsCleanly) {
  const std::string out = fixture().root + "/interrupted";
  // A watcher raises SIGINT once two steps are logged (two "train" events: each
  // logging step also writes a "teacher" line); the run must finish its step, save, and return
  // 0 long before its 80 steps are done.
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      std::ifstream in(out + "/metrics.jsonl");
      int steps = 0;
      for (std::string line; std::getline(in, line);) steps += line.find("\"event\":\"train\"") != std::string::npos;
      if (steps >= 2) {
        // To this thread (raise), whose stack is its own: a process-wide kill could run the
        // handler on the training thread inside oneDNN's sgemm, whose stack pointer then points
        // into the heap (apps/run/run_directory.h); the programs take the signal on a thread of
        // their own instead, which this in-process run does not have.
        ::raise(SIGINT);
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
  EXPECT_EQ(byol(with(tiny(root + "/bad7"), {"--crop-size", "1"})), 1);  // the recipe, checked before the run starts
  for (const char* d : {"/bad1", "/bad2", "/bad3", "/bad4", "/bad5", "/bad6", "/bad7"})
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
