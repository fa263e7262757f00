// The fixmatch program end to end on a generated 10-class dataset of 8x8 images written as
// IDX files (the mnist reader):
//
//   smoke       the run directory; a threshold no pseudo-label reaches masks every unlabeled
//               row out (mask rate 0, unlabeled loss 0), one every pseudo-label reaches keeps all
//   teacher     the smoothing replayed on the host from consecutive checkpoints: rule, part
//               seed, step index, element fragments, order (the teacher moves after the
//               optimizer step of step k, towards the student it left), BN buffers copied
//   resume      stopped and resumed by the built program in fresh processes: tensors,
//               checkpoint metadata and every metrics event (the evaluation at the stop step
//               included) equal the uninterrupted run's
//   pseudo-labels  one train_step: the mask and pseudo-labels come from the weak rows
//   bad input   refused, nothing overwritten
//
// Runs are in-process (fixmatch_main) except the resume test's, which run build-cpu/fixmatch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "apps/fixmatch/fixmatch.h"
#include "apps/fixmatch/step.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/synthetic_images.h"
#include "engine/checkpoint.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "models/model.h"
#include "tests/program_runs.h"
#include "tests/teacher_replay.h"

namespace tessera {
namespace {

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "tessera_fixmatch_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

// A tiny dataset, made once per test binary.
const std::string& data_dir() {
  static const std::string dir = [] {
    const std::string d = temp_dir("data");
    std::filesystem::create_directories(d);
    program_runs::write_synthetic_idx(d, "train", 200, 1);
    program_runs::write_synthetic_idx(d, "t10k", 50, 2);
    return d;
  }();
  return dir;
}

// The tiny recipe, then `args`.
std::vector<std::string> tiny(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"--data", "mnist:" + data_dir(), "--arch", "wrn-10-1", "--labels", "20",
                                  "--batch-size", "4", "--mu", "2", "--steps", "6", "--threshold", "0.1",
                                  "--eval-every", "3", "--eval-batch", "25", "--log-every", "1"};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

// Runs the program as main() would: its exit status.
int fixmatch(std::vector<std::string> args) {
  std::vector<std::string> all = tiny(args);
  all.insert(all.begin(), "fixmatch");
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
  // Threshold 0.1 with 10 classes: every pseudo-label counts (the largest of ten
  // probabilities is at least 0.1), so the unlabeled loss is live at every step.
  for (const nlohmann::json& t : train) {
    EXPECT_DOUBLE_EQ(t["mask_rate"].get<double>(), 1.0) << t;
    EXPECT_GT(t["unsup_loss"].get<double>(), 0.0) << t;
  }
  const std::vector<nlohmann::json> eval = events(out, "eval");
  ASSERT_EQ(eval.size(), 1u);  // step 3 (the end is the final event)
  EXPECT_EQ(eval[0]["step"], 3);
  const std::vector<nlohmann::json> final_ev = events(out, "final");
  ASSERT_EQ(final_ev.size(), 1u);
  EXPECT_EQ(final_ev[0]["step"], 6);
  // Accuracies are whole numbers of the 50 test images, in percent.
  for (const nlohmann::json* e : {&eval[0], &final_ev[0]})
    for (const char* k : {"test_top1_teacher", "test_top1_student"}) {
      ASSERT_TRUE(e->contains(k)) << k;
      const double v = (*e)[k].get<double>(), images = v * 50.0 / 100.0;
      EXPECT_TRUE(v >= 0 && v <= 100 && std::fabs(images - std::round(images)) < 1e-9) << k << " = " << v;
    }
  // The teacher is the checkpoint's unprefixed model, the student under "student.".
  const SafetensorsFile f = SafetensorsFile::read(out + "/last.safetensors");
  EXPECT_TRUE(f.has("fc.weight"));
  EXPECT_TRUE(f.has("student.fc.weight"));
  EXPECT_EQ(f.metadata("run.step"), "6");
}

// --eval-only (as byol's and moco's): a stopped run's checkpoint evaluated without training
// gives the scores its --eval-every evaluation gave at that step; the checkpoint is untouched.
// Without --resume it is a usage error.
TEST(FixMatch, EvalOnlyScoresTheCheckpointWithoutTraining) {
  const std::string out = temp_dir("eval_only");
  ASSERT_EQ(fixmatch({"--out", out, "--stop-after", "3"}), 0);
  auto bytes = [&out] {
    std::ifstream in(out + "/last.safetensors", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string checkpoint = bytes();
  const std::vector<nlohmann::json> eval = events(out, "eval");
  ASSERT_EQ(eval.size(), 1u);
  ASSERT_EQ(fixmatch({"--resume", out, "--eval-only"}), 0);
  const std::vector<nlohmann::json> final_ev = events(out, "final");
  ASSERT_EQ(final_ev.size(), 1u);
  EXPECT_EQ(final_ev[0]["step"], 3);
  EXPECT_EQ(final_ev[0]["test_top1_teacher"], eval[0]["test_top1_teacher"]);
  EXPECT_EQ(final_ev[0]["test_top1_student"], eval[0]["test_top1_student"]);
  EXPECT_EQ(events(out, "train").size(), 3u);  // no step taken
  EXPECT_EQ(bytes(), checkpoint);
  EXPECT_EQ(fixmatch({"--out", temp_dir("eval_only_new"), "--eval-only"}), 2);
}

// A test-set evaluation between steps (--eval-every) runs in the training step's workspace
// (apps/fixmatch/fixmatch.cpp) and must change nothing the training reads: eval-mode BatchNorm
// leaves the running statistics, and nothing of a step outlives the next step's reset. So the run
// with one gives the losses and the checkpoint of the run without, bit for bit.
TEST(FixMatch, EvaluationBetweenStepsLeavesTrainingUnchanged) {
  const std::string evaluated = temp_dir("eval_between"), plain = temp_dir("eval_end_only");
  ASSERT_EQ(fixmatch({"--out", evaluated}), 0);  // the tiny recipe evaluates at step 3 of 6
  ASSERT_EQ(fixmatch({"--out", plain, "--eval-every", "0"}), 0);
  ASSERT_EQ(events(evaluated, "eval").size(), 1u);
  ASSERT_EQ(events(plain, "eval").size(), 0u);
  const std::vector<nlohmann::json> a = events(evaluated, "train"), b = events(plain, "train");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : {"sup_loss", "unsup_loss", "mask_rate", "pseudo_label_acc"}) EXPECT_EQ(a[i][k], b[i][k]) << k << " at step " << i + 1;
  program_runs::expect_same_checkpoint(evaluated + "/last.safetensors", plain + "/last.safetensors", {"eval-every"});
  const nlohmann::json fa = events(evaluated, "final").at(0), fb = events(plain, "final").at(0);
  for (const char* k : {"test_top1_teacher", "test_top1_student"}) EXPECT_EQ(fa[k], fb[k]) << k;
}

// The threshold is the mask: at 0.999 no pseudo-label of a network two steps from its random
// start is that confident, so every unlabeled row is masked out and the unlabeled loss is
// exactly 0 (with 0.1, every row counts and the loss is positive). A mask that ignores the
// threshold fails here; the smoke run's threshold 0.1 cannot tell.
TEST(FixMatch, ThresholdNoPseudoLabelReachesMasksEverythingOut) {
  const std::string low = temp_dir("threshold_low"), high = temp_dir("threshold_high");
  ASSERT_EQ(fixmatch({"--out", low, "--steps", "2", "--eval-every", "0"}), 0);
  ASSERT_EQ(fixmatch({"--out", high, "--steps", "2", "--eval-every", "0", "--threshold", "0.999"}), 0);
  const std::vector<nlohmann::json> a = events(low, "train"), b = events(high, "train");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (const nlohmann::json& t : b) {
    EXPECT_EQ(t["mask_rate"].get<double>(), 0.0) << t;
    EXPECT_EQ(t["unsup_loss"].get<double>(), 0.0) << t;
  }
  // Step 0 runs before any optimizer step: its labeled loss cannot depend on the threshold.
  EXPECT_EQ(a[0]["sup_loss"], b[0]["sup_loss"]);
  EXPECT_GT(a[0]["unsup_loss"].get<double>(), 0.0);
  for (const std::string& d : {low, high}) std::filesystem::remove_all(d);
}

// The pseudo-labels and the mask come from the weak rows of the one forward over
// [labeled | weak | strong]. The step's counts say which rows it read: with a threshold that
// keeps a different number of weak rows than strong ones, counts[0] is the weak rows' number;
// with the true labels set to the weak rows' argmax, every pseudo-label is counted correct.
TEST(FixMatch, PseudoLabelsComeFromTheWeakRows) {
  fixmatch::Config c;
  c.arch = "wrn-10-1";
  c.batch_size = 4;
  c.mu = 2;
  const int64_t B = 4, U = 8, N = B + 2 * U;
  ModelSpec ms;
  ms.arch = c.arch;
  ms.in_channels = 1;
  ms.num_classes = 10;
  fixmatch::Nets n = fixmatch::build_nets(c, ms, Device::CPU);
  // Three independent sets of images: the strong rows are not the weak rows.
  std::vector<float> pixels(static_cast<size_t>(N * 8 * 8));
  std::mt19937 rng(31);
  for (float& p : pixels) p = static_cast<float>(rng() >> 8) * 0x1p-23f - 1.0f;  // uniform in [-1, 1)
  data::Batch batch;
  std::vector<OwnedTensor> views;
  const int64_t counts[3] = {B, U, U};
  for (int v = 0, at = 0; v < 3; at += static_cast<int>(counts[v] * 64), ++v) {
    views.emplace_back(Device::CPU, Shape{counts[v], 1, 8, 8});
    from_host(views.back().t, std::vector<float>(pixels.begin() + at, pixels.begin() + at + counts[v] * 64));
    batch.views.push_back(views.back().t);
  }
  // The forward the step makes, before it (train-mode BN over the whole batch).
  std::vector<float> weak_conf, strong_conf;
  std::vector<int32_t> weak_label;
  {
    Workspace ws(Device::CPU);
    Graph g(ws);
    NoGradScope no_grad(g);
    OwnedTensor x(Device::CPU, Shape{N, 1, 8, 8});
    from_host(x.t, pixels);
    Var* logits = n.student->forward(g, g.input(x.t, "images"), true);
    OwnedTensor label(Device::CPU, Shape{N}, DType::I32), conf(Device::CPU, Shape{N});
    ops::argmax_max_prob(logits->value, label.t, conf.t);
    const std::vector<float> all_conf = to_host_f32(conf.t);
    const std::vector<int32_t> all_label = to_host_i32(label.t);
    weak_conf.assign(all_conf.begin() + B, all_conf.begin() + B + U);
    strong_conf.assign(all_conf.begin() + B + U, all_conf.end());
    weak_label.assign(all_label.begin() + B, all_label.begin() + B + U);
  }
  // A threshold between two confidences at which the weak and strong rows keep different counts.
  std::vector<float> all(weak_conf);
  all.insert(all.end(), strong_conf.begin(), strong_conf.end());
  std::sort(all.begin(), all.end());
  auto kept = [](const std::vector<float>& conf, double t) {
    return std::count_if(conf.begin(), conf.end(), [t](float p) { return p >= t; });
  };
  c.threshold = -1;
  for (size_t i = 0; i + 1 < all.size() && c.threshold < 0; ++i) {
    const double t = 0.5 * (static_cast<double>(all[i]) + all[i + 1]);
    if (all[i] < all[i + 1] && kept(weak_conf, t) != kept(strong_conf, t)) c.threshold = t;
  }
  ASSERT_GE(c.threshold, 0) << "no threshold tells the weak rows from the strong ones";

  OwnedTensor y_labeled(Device::CPU, Shape{B}, DType::I32), y_unlabeled(Device::CPU, Shape{U}, DType::I32);
  from_host(y_labeled.t, std::vector<int32_t>{1, 2, 3, 4});
  from_host(y_unlabeled.t, weak_label);
  batch.labels = {y_labeled.t, y_unlabeled.t};
  OwnedTensor losses(Device::CPU, Shape{2}), step_counts(Device::CPU, Shape{2}, DType::I32);
  fill_zero(step_counts.t);
  Workspace ws(Device::CPU);
  Graph g(ws);
  profile::PhaseSequence phases;
  fixmatch::train_step(n, c, g, batch, 0, 0.03f, fixmatch::StepSlots{losses.t.f32(), step_counts.t.i32()}, phases);
  const std::vector<int32_t> got = to_host_i32(step_counts.t);
  EXPECT_EQ(got[0], kept(weak_conf, c.threshold)) << "strong rows would keep " << kept(strong_conf, c.threshold);
  EXPECT_EQ(got[1], U);
}

TEST(FixMatch, SupervisedBaselineSkipsTheUnlabeledLoss) {
  const std::string out = temp_dir("supervised");
  ASSERT_EQ(fixmatch({"--out", out, "--lambda-u", "0", "--steps", "2", "--eval-every", "0"}), 0);
  const std::vector<nlohmann::json> train = events(out, "train");
  ASSERT_EQ(train.size(), 2u);
  EXPECT_EQ(train[0]["unsup_loss"].get<double>(), 0.0);
  EXPECT_FALSE(train[0].contains("mask_rate"));
}

// ---- the teacher, replayed -------------------------------------------------------------------

// STS over element fragments with a constant momentum, the BN statistics copied (the default),
// a seed other than the default. On the CPU: checkpoints of separate runs are consistent only
// where training is bit-reproducible.
constexpr uint64_t kReplaySeed = 5;
constexpr float kReplayM = 0.99f, kReplayP = 0.5f;

std::vector<std::string> replay_recipe(const std::string& out, int stop_after) {
  return {"--out", out, "--device", "cpu", "--seed", "5", "--smoothing", "sts", "--granularity", "element",
          "--preserve-prob", "0.5", "--momentum", "0.99", "--bn-buffers", "copy", "--eval-every", "0",
          "--stop-after", std::to_string(stop_after)};
}

// Checkpoints after steps 1..3, each from a fresh run stopped there (the run is deterministic,
// so they are the uninterrupted run's whatever resume does). Between checkpoints s and s + 1
// the program ran step index s: forward, backward, optimizer step, then
//   teacher <- rule(teacher, student, step s, m)   (student: as this step's optimizer left it)
// and the teacher's BN statistics become the student's. Replayed on the host, bit for bit.
TEST(FixMatch, TeacherUpdatesReplayFromConsecutiveCheckpoints) {
  constexpr int kLast = 3;
  std::vector<SafetensorsFile> after(1);  // after[s]: the checkpoint after s steps (none for 0)
  for (int s = 1; s <= kLast; ++s) {
    const std::string out = temp_dir("replay_" + std::to_string(s));
    ASSERT_EQ(fixmatch(replay_recipe(out, s)), 0);
    after.push_back(SafetensorsFile::read(out + "/last.safetensors"));  // read whole: the run can go
    std::filesystem::remove_all(out);
    ASSERT_EQ(after.back().metadata("run.step"), std::to_string(s));
  }
  // fixmatch's parts: program 2, part 1 (the teacher's masks).
  const uint64_t seed = replay::program_part_seed(kReplaySeed, 2, 1);
  EXPECT_EQ(after[1].metadata("smoothing.seed"), std::to_string(seed));

  const std::unique_ptr<Model> teacher = make_model(model_spec_from(after[1], ""), Device::CPU, false);
  replay::ReplayCounts counts;
  for (int s = 1; s < kLast; ++s) {
    const SafetensorsFile &before = after[static_cast<size_t>(s)], &next = after[static_cast<size_t>(s) + 1];
    const std::string what = "teacher after step index " + std::to_string(s);
    const auto want = replay::replay_update(teacher->param_table(), before, "", next, "student.",
                                            {seed, s, kReplayP, kReplayM, replay::Fragments::Element}, &counts);
    replay::expect_same_tensors(want, next, "", what);
    EXPECT_EQ(next.metadata("smoothing.step"), std::to_string(s + 1));
    // --bn-buffers copy: the teacher's statistics are the student's after the step.
    for (const Slot& b : teacher->buffer_table().slots()) {
      if (next.entry(b.name).dtype == StDType::I64) {
        EXPECT_EQ(next.i64(b.name), next.i64("student." + b.name)) << what << ": " << b.name;
      } else {
        EXPECT_EQ(next.f32(b.name), next.f32("student." + b.name)) << what << ": " << b.name;
      }
    }
    EXPECT_NE(before.f32("bn1.running_mean"), next.f32("bn1.running_mean")) << "the statistics must move for this to tell";
  }
  EXPECT_GT(counts.kept_fragments, 0);
  EXPECT_GT(counts.updated_fragments, 0);
  EXPECT_GT(counts.telling_keeps, 0);
  EXPECT_GT(counts.telling_updates, 0);
}

// ---- resume --------------------------------------------------------------------------------

// The built program stopped after step 3 (where it also evaluates) and resumed, each part in a
// fresh process: the same tensors, checkpoint metadata (optimizer step count, smoother state)
// and metrics events - the evaluation at step 3 included - as the uninterrupted run. A resume
// that stops at once rewrites the checkpoint it started from.
TEST(FixMatch, ResumeInAFreshProcessIsBitIdentical) {
  const std::string whole = temp_dir("whole"), parts = temp_dir("parts");
  auto run = [](const std::vector<std::string>& args) {
    const program_runs::Result r = program_runs::run("fixmatch", args);
    EXPECT_EQ(r.status, 0) << r.output;
    return r.status;
  };
  // On the CPU, where resuming is specified to be bit-identical.
  const std::vector<std::string> flags = {"--device", "cpu", "--smoothing", "sts", "--pseudo-labels", "teacher"};
  std::vector<std::string> a = flags, b = flags;
  a.insert(a.end(), {"--out", whole});
  b.insert(b.end(), {"--out", parts, "--stop-after", "3"});
  ASSERT_EQ(run(tiny(a)), 0);
  ASSERT_EQ(run(tiny(b)), 0);
  const std::vector<nlohmann::json> stopped = events(parts, "eval");
  ASSERT_EQ(stopped.size(), 1u);
  EXPECT_EQ(stopped[0]["step"], 3);
  const std::string at3 = temp_dir("parts_at_3.safetensors");
  std::filesystem::copy_file(parts + "/last.safetensors", at3);
  ASSERT_EQ(run({"--resume", parts, "--stop-after", "3"}), 0);
  program_runs::expect_same_checkpoint(at3, parts + "/last.safetensors");
  // The counters the checkpoint records are the steps taken.
  const SafetensorsFile f3 = SafetensorsFile::read(at3);
  for (const char* key : {"run.step", "optim.steps", "smoothing.step"}) {
    ASSERT_TRUE(f3.metadata().count(key)) << "the checkpoint does not record " << key;
    EXPECT_EQ(f3.metadata(key), "3") << key;
  }

  ASSERT_EQ(run({"--resume", parts}), 0);
  program_runs::expect_same_run(whole, parts);
  EXPECT_EQ(events(parts, "eval").size(), 1u);
  EXPECT_EQ(events(parts, "final").size(), 1u);
  for (const std::string& d : {whole, parts, at3}) std::filesystem::remove_all(d);
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
