// Whole-step twins: the CPU is the GPU's oracle, end to end (issue 13, section 2).
//
// Per-kernel comparisons (tests/op_case.cpp, tests/teacher_test.cpp) cannot see what only a
// whole training step shows: stream order between kernels, workspace reuse from one step to
// the next, launch configurations at the programs' shapes, cuDNN descriptors cached across
// shapes. Here byol and fixmatch run N = 20 steps of their real programs on both backends from
// one seed, on the same batches, and are compared:
//
//   CPU halves (run everywhere)
//     <P>CpuHalf...        the CPU run stopped and resumed at every step, in this process,
//                          equals one uninterrupted run in another process, bit for bit; the
//                          teacher masks recovered from each pair of consecutive checkpoints are
//                          the Philox masks (and, for byol, the logged updated fraction); a
//                          checkpoint resumed and saved at once round-trips
//     <P>Tolerances...     the drift of float32 rounding, measured: the same steps with another
//                          OpenBLAS kernel family (Prescott's SSE3 kernels, no FMA) against the
//                          CPU run; every GPU tolerance below must be >= 10x what it measures
//   GPU halves (SKIPPED with the reason where CUDA cannot run)
//     <P>CudaSteps...      from each CPU checkpoint k, one step on the GPU: the loss of step k,
//                          the teacher masks (identical), the teacher (byol: bit for bit), the
//                          student, BN statistics and optimizer state after it
//     <P>CudaRun...        N steps on the GPU from the seed: every per-step loss, the host-side
//                          numbers (lr, momentum, updated fraction, mask rate) exactly, the final
//                          checkpoint
//     <P>CudaResume...     stopped and resumed in fresh processes on the GPU: bit-identical
//     <P>CudaCheckpoint... the GPU's checkpoint resumed and saved at once on the CPU, then on
//                          the GPU: every tensor and metadata entry unchanged
//
// Why both shapes: a step taken from a loaded checkpoint is the first of its process, so what
// leaks from one step to the next inside a process (workspace reuse, gradients not zeroed)
// shows only in the N-step run; what a resume fails to restore shows in every loaded step.
//
// Tolerances (Tolerances below, per program) were chosen from that measurement on the CPU
// (2-core AMD EPYC, OpenBLAS Zen kernels against Prescott), 40x to 1600x above it (the GPU runs
// other convolution algorithms and other reduction orders); the GPU tests print what they
// observe ("[ drift    ]" lines) so the first GPU run can tighten them (docs/gpu-log.md).
//
// byol needs two recipes. At the recipe's lr 0.05 its tiny network is chaotic: a difference of
// one rounding grows ~10x per step once a ReLU kink is crossed (the gradients of the first
// layers jump by up to 18% when one BN weight moves by one ulp, measured), and after 20 steps
// two CPU runs that differ only in their BLAS kernels are 1-13% apart in loss. One step from
// the same state stays at rounding level, so the per-step twin uses lr 0.05; the N-step run
// uses lr 1e-4, where 20 steps on two BLAS kernels stay within 3e-6 in loss. fixmatch is not
// chaotic at its lr 0.03: one recipe serves both. The CPU side runs with --threads 1 (the thread
// count changes the CPU's rounding, and one thread is the quickest at these sizes).
//
// Without a GPU, TESSERA_TWINS_STAND_IN=cpu runs the GPU halves with the CPU in the GPU's place
// (every drift is then 0): it exercises their code on machines that have none.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/byol/byol.h"
#include "apps/fixmatch/fixmatch.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/synthetic_images.h"
#include "engine/checkpoint.h"
#include "kernels/cpu/blas_kernels.h"
#include "models/model.h"
#include "tests/op_case.h"
#include "tests/program_runs.h"
#include "tests/teacher_replay.h"
#include "tests/twins.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using twins::StateDrift;
using twins::Worst;

constexpr int64_t kSteps = 20;  // N: every run stops after N of its N + 1 steps (no final evaluation)

// ---- the data --------------------------------------------------------------------------------

const program_runs::SyntheticData& fixture() {
  static const program_runs::SyntheticData f("twins", 200, 11, 50, 12);
  return f;
}

// ---- the programs and their tolerances -------------------------------------------------------

struct Tolerances {
  // One step on both backends from the same checkpoint, step by step (relative drifts, as
  // tests/twins.h measures them). A step whose student and optimizer state alone pass the
  // tight bounds but stay within the loose ones counts as a kink step (a ReLU input within
  // rounding of 0 on one side: its gradient jumps); at most `kink_steps` of the N - 1.
  double step_loss;                         // every logged loss
  double step_params;                       // teacher, student, BN statistics
  double step_optim;                        // optimizer state (the gradients of the step)
  int kink_steps;
  double kink_params, kink_optim;           // the loose bounds of a kink step
  bool teacher_exact;                       // the teacher after the step bit for bit
  // N steps from the seed.
  double run_loss;                          // every logged loss, every step
  double run_params, run_optim;             // the final checkpoint
};

struct Program {
  std::string name;
  int (*main_fn)(int, const char* const*);
  std::vector<std::string> step_recipe, run_recipe;  // computation flags, no --out / --device
  std::vector<twins::SmoothedPart> parts;
  // byol moves its teacher first thing in step k, towards the student of checkpoint k;
  // fixmatch after the optimizer step, towards the student of checkpoint k + 1.
  bool teacher_moves_first;
  std::vector<std::string> loss_keys;   // per-step numbers compared within tolerance
  std::vector<std::string> exact_keys;  // per-step numbers computed on the host, or counts
  Tolerances tol;
  bool updated_fraction_logged;
};

using program_runs::with;

const Program& byol_program() {
  static const Program p = [] {
    Program b;
    b.name = "byol";
    b.main_fn = byol_main;
    // tests/byol_test.cpp's tiny network; 200 images of 16 are 12 steps an epoch, 21 steps with
    // a 3-step warm-up; STS over channel fragments with the cosine schedule, the teacher's own
    // BN statistics.
    const std::vector<std::string> common = {
        "--data", "mnist:" + fixture().data, "--width", "4", "--proj-hidden", "16", "--proj-dim", "8",
        "--pred-hidden", "16", "--batch-size", "16", "--steps", std::to_string(kSteps + 1), "--optimizer", "sgd",
        "--warmup-epochs", "0.25", "--momentum", "0.9", "--momentum-schedule", "cosine", "--smoothing", "sts",
        "--preserve-prob", "0.7", "--granularity", "channel", "--bn-buffers", "own", "--seed", "3",
        "--log-every", "1", "--save-every", "1000", "--threads", "1", "--eval-batch", "50", "--probe-epochs", "1",
        // The CPU side is the oracle: the reference kernels, whose drift the tolerances were measured on.
        // FP32 math on the GPU: the default (pytorch) lets cuDNN use TF32, ~1e-3 from the CPU.
        "--cpu-kernels", "reference", "--math", "fp32"};
    b.step_recipe = with(common, {"--lr", "0.05"});
    b.run_recipe = with(common, {"--lr", "1e-4"});
    b.parts = {{"backbone", "", "student.backbone.", "backbone.smoothing."},
               {"projector", "teacher.projector.", "student.projector.", "projector.smoothing."}};
    b.teacher_moves_first = true;
    b.loss_keys = {"loss"};
    b.exact_keys = {"step", "epoch", "lr", "momentum", "updated_fraction"};
    // Measured (Twins.ByolTolerancesCover..., Prescott against Zen): one step: loss 9.5e-7,
    // teacher 0, student 1.1e-5, BN statistics 6e-7, optimizer 2.1e-5; 20 steps at lr 1e-4:
    // loss 2.3e-6, final teacher 8e-7, student 5.7e-6, BN statistics 2.4e-6, optimizer 1.4e-4.
    // Kinks: one step in ~80 perturbed ones while this test was written (a BN weight moved by
    // one ulp: optimizer state 0.18, student 7e-3 after the step); the optimizer bound of the
    // 20-step run is loose for the same reason. On an H200's host (its newer g++, SkylakeX
    // against Prescott, 2026-12-04, docs/gpu-log.md) the one-step drifts were as here, but the
    // 20-step run parted from step 13 on: loss 1.1e-4 at step 18, final student 3.4e-4, BN
    // statistics 9.2e-5, optimizer state 8.3e-2 (the GPU against the CPU there: 1.5e-6, 4.2e-6,
    // 2.3e-6, 1.6e-4). The run bounds are 10x that: the whole run is an end-to-end check of
    // the forward, the teacher and the statistics; the steps above hold the gradients tight.
    b.tol = {1e-4, 1e-3, 3e-3, 1, 5e-2, 0.5, true, 2e-3, 5e-3, 1.0};
    b.updated_fraction_logged = true;
    return b;
  }();
  return p;
}

const Program& fixmatch_program() {
  static const Program p = [] {
    Program f;
    f.name = "fixmatch";
    f.main_fn = fixmatch_main;
    // tests/fixmatch_test.cpp's tiny recipe; STS over channel fragments, momentum 0.99 so an
    // updated fragment visibly moves, the teacher's pseudo-labels so the masks reach the loss,
    // and a threshold of 0.15 that keeps 62-100% of the pseudo-labels (the mask decides).
    f.step_recipe = {"--data", "mnist:" + fixture().data, "--arch", "wrn-10-1", "--labels", "20", "--batch-size", "4",
                     "--mu", "2", "--steps", std::to_string(kSteps + 1), "--threshold", "0.15", "--smoothing", "sts",
                     "--granularity", "channel", "--preserve-prob", "0.5", "--momentum", "0.99", "--pseudo-labels",
                     "teacher", "--seed", "3", "--eval-every", "0", "--eval-batch", "25", "--log-every", "1",
                     "--save-every", "1000", "--threads", "1", "--cpu-kernels", "reference", "--math", "fp32"};
    // The 20-step run at the recipe's lr 0.03 is chaotic: a difference of one ulp grew 10x per
    // step from step 13 on (1e-6 -> 1e-3 in the loss by step 20) between two OpenBLAS kernels
    // in the -O1 sanitizer build, so its drift measured luck, not the backends. At lr 1e-3 it
    // stays near the one-step drift (on the H200's host too), as BYOL's at lr 1e-4 does here.
    f.run_recipe = with(f.step_recipe, {"--lr", "1e-3"});
    f.parts = {{"teacher", "", "student.", "smoothing."}};
    f.teacher_moves_first = false;
    f.loss_keys = {"sup_loss", "unsup_loss"};
    // The mask rate and pseudo-label accuracy are counts: a confidence within rounding of the
    // threshold would flip one (none did in 20 steps x 8 rows on two BLAS kernels).
    f.exact_keys = {"step", "lr", "mask_rate", "pseudo_label_acc"};
    // Measured (Twins.FixMatchTolerancesCover...): one step: losses 2.3e-7, teacher 6e-8,
    // student 3.2e-7, BN statistics 1.2e-7, optimizer 1.4e-6; 20 steps at lr 1e-3: losses 1e-6,
    // final teacher 2.3e-6, BN statistics 4.6e-7, and a kink at the last step (a BN bias's
    // gradient near 0) that left the student 1.3e-4 and the optimizer state 3.8e-3 apart, so
    // the 20-step bounds on those two are loose for the same reason as BYOL's.
    f.tol = {1e-4, 1e-4, 1e-3, 1, 5e-2, 0.5, false, 1e-4, 3e-3, 0.5};
    f.updated_fraction_logged = false;
    return f;
  }();
  return p;
}

// ---- running them ----------------------------------------------------------------------------

// In this process, as main() would; the OpenMP thread count the program sets (--threads) is
// put back afterwards so the rest of the suite is not affected.
int run_here(const Program& p, const std::vector<std::string>& args) {
  std::vector<const char*> argv{p.name.c_str()};
  for (const std::string& a : args) argv.push_back(a.c_str());
  const int threads = omp_get_max_threads();
  clear_stop_request();
  const int rc =
      run_program(p.name.c_str(), [&] { return p.main_fn(static_cast<int>(argv.size()), argv.data()); });
  omp_set_num_threads(threads);
  return rc;
}

// In a process of its own (the built program next to this binary): its exit status, and its
// output as a test failure when that is not 0.
int run_apart(const Program& p, const std::vector<std::string>& args) {
  const program_runs::Result r = program_runs::run(p.name, args);
  if (r.status != 0) ADD_FAILURE() << p.name << " exited with " << r.status << ":\n" << r.output;
  return r.status;
}

// Sets an environment variable for the lifetime of the object (the children started meanwhile
// inherit it), then puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      had_ = true;
      old_ = old;
    }
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

double number(const nlohmann::json& line, const std::string& key) {
  const auto it = line.find(key);
  return it != line.end() && it->is_number() ? it->get<double>() : std::nan("");  // null: not finite
}

std::vector<nlohmann::json> train_lines(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == "train") out.push_back(std::move(j));
  }
  return out;
}

// A run's N steps: the run directory, a copy of the checkpoint after every step, the metrics.
struct Trajectory {
  std::string dir;
  std::vector<std::string> ckpt;      // ckpt[k]: after k steps (k = 1..N; [0] unused)
  std::vector<nlohmann::json> lines;  // lines[k]: the train event of step index k (k = 0..N-1)
};

// The step recipe on the CPU, stopped and resumed at every step in this process, each
// checkpoint kept. Built once per program; null (and a failure of the test that built it) when
// the program failed.
const Trajectory* cpu_chain(const Program& p) {
  static std::map<std::string, std::unique_ptr<Trajectory>> done;
  if (done.count(p.name)) return done[p.name].get();
  std::unique_ptr<Trajectory>& slot = done[p.name];
  auto t = std::make_unique<Trajectory>();
  t->dir = fixture().root + "/" + p.name + "_cpu_chain";
  const std::string ck = t->dir + "_checkpoints";
  fs::create_directories(ck);
  t->ckpt.resize(kSteps + 1);
  for (int64_t k = 1; k <= kSteps; ++k) {
    const std::vector<std::string> stop = {"--device", "cpu", "--stop-after", std::to_string(k)};
    const int rc = k == 1 ? run_here(p, with(with(p.step_recipe, {"--out", t->dir}), stop))
                          : run_here(p, with({"--resume", t->dir}, stop));
    if (rc != 0) {
      ADD_FAILURE() << p.name << " on the CPU failed at step " << k << " (exit " << rc << ")";
      return nullptr;
    }
    t->ckpt[static_cast<size_t>(k)] = ck + "/" + std::to_string(k) + ".safetensors";
    fs::copy_file(t->dir + "/last.safetensors", t->ckpt[static_cast<size_t>(k)]);
  }
  t->lines = train_lines(t->dir);
  if (t->lines.size() != static_cast<size_t>(kSteps)) {
    ADD_FAILURE() << p.name << ": " << t->lines.size() << " train events in " << t->dir << ", not " << kSteps;
    return nullptr;
  }
  slot = std::move(t);
  return slot.get();
}

// One uninterrupted run of the run recipe on `device`, in this process. Built once per
// (program, device, side). On the CPU, where the run recipe is the step recipe, the CPU chain is
// that run (bit for bit: the CPU halves check it). `gpu_side`: the run a GPU half compares, a
// run of its own even when the CPU stands in for the GPU (else it would be compared with itself).
const std::string* whole_run(const Program& p, const std::string& device, bool gpu_side = false) {
  static std::map<std::string, std::unique_ptr<std::string>> done;
  const std::string key = p.name + "/" + device + (gpu_side ? "/gpu-side" : "");
  if (done.count(key)) return done[key].get();
  std::unique_ptr<std::string>& slot = done[key];
  if (device == "cpu" && !gpu_side && p.run_recipe == p.step_recipe) {
    const Trajectory* chain = cpu_chain(p);
    if (chain) slot = std::make_unique<std::string>(chain->dir);
    return slot.get();
  }
  const std::string dir = fixture().root + "/" + p.name + "_whole_" + device + (gpu_side ? "_gpu_side" : "");
  const int rc =
      run_here(p, with(p.run_recipe, {"--out", dir, "--device", device, "--stop-after", std::to_string(kSteps)}));
  if (rc != 0) {
    ADD_FAILURE() << p.name << " on " << device << " failed (exit " << rc << ")";
    return nullptr;
  }
  slot = std::make_unique<std::string>(dir);
  return slot.get();
}

// Where the GPU halves run: "cuda", or "cpu" standing in (TESSERA_TWINS_STAND_IN=cpu), or ""
// with the reason they cannot.
std::string twin_device(std::string* reason) {
  if (testing::cuda_testable(reason)) return "cuda";
  const char* stand_in = std::getenv("TESSERA_TWINS_STAND_IN");
  if (stand_in && std::string(stand_in) == "cpu") {
    std::printf("[ twins    ] TESSERA_TWINS_STAND_IN=cpu: the CPU stands in for the GPU (%s)\n", reason->c_str());
    return "cpu";
  }
  return "";
}

// A run directory that resumes the CPU chain's checkpoint after k steps (and nothing after it).
std::string resumable_copy(const Trajectory& cpu, int64_t k, const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"config.json", "labeled_subset.json"})
    if (fs::exists(cpu.dir + "/" + f)) fs::copy_file(cpu.dir + "/" + f, dir + "/" + f);
  fs::copy_file(cpu.ckpt[static_cast<size_t>(k)], dir + "/last.safetensors");
  return dir;
}

// ---- comparing -------------------------------------------------------------------------------

// The teacher masks of step index k of each smoothed part: from `before` (checkpoint k) to
// `after` (checkpoint k + 1), as the program blends (towards the student of `before` or of
// `after`).
std::vector<twins::Mask> step_masks(const Program& p, const SafetensorsFile& before, const SafetensorsFile& after,
                                    int64_t k) {
  std::vector<twins::Mask> masks;
  for (const twins::SmoothedPart& part : p.parts) {
    const twins::SmootherMeta meta = twins::smoother_meta(before, part);
    const std::unique_ptr<Model> m = twins::part_model(before, part);
    masks.push_back(twins::recover_mask(m->param_table(), meta.fragments, before, after,
                                        p.teacher_moves_first ? before : after, part, meta.momentum_at(k)));
  }
  return masks;
}

// The worst of each measure over a series of comparisons, with where it was.
struct Report {
  Worst loss;
  Worst group[twins::kGroups];
  std::vector<double> loss_per_step;  // the worst loss drift of each step, for the printout
  void add(const StateDrift& d, const std::string& where) {
    for (int g = 0; g < twins::kGroups; ++g) group[g].take(d.group[g].value, where + " " + d.group[g].where);
  }
  void print(const std::string& title) const {
    std::printf("[ drift    ] %s:", title.c_str());
    if (!loss_per_step.empty()) std::printf(" loss %s (%s);", twins::sci(loss.value).c_str(), loss.where.c_str());
    for (int g = 0; g < twins::kGroups; ++g)
      std::printf("%s %s %s (%s)", g ? ";" : "", twins::group_name(g), twins::sci(group[g].value).c_str(),
                  group[g].where.c_str());
    std::printf("\n");
    if (!loss_per_step.empty()) {
      std::printf("[ drift    ] %s: loss per step:", title.c_str());
      for (double v : loss_per_step) std::printf(" %s", twins::sci(v).c_str());
      std::printf("\n");
    }
    std::fflush(stdout);
  }
};

// Line `got` against line `want` of the same step: the exact keys equal, the losses' drift
// recorded.
void compare_lines(const Program& p, const nlohmann::json& want, const nlohmann::json& got, const std::string& where,
                   Report* r) {
  for (const std::string& key : p.exact_keys)
    EXPECT_EQ(got.value(key, nlohmann::json()), want.value(key, nlohmann::json()))
        << where << ": '" << key << "' is computed on the host (or counted): it cannot differ";
  Worst worst;
  for (const std::string& key : p.loss_keys) {
    const double d = twins::loss_drift(number(want, key), number(got, key));
    r->loss.take(d, where + " " + key);
    worst.take(d, key);
  }
  r->loss_per_step.push_back(worst.value);
}

struct StepOutcome {
  StateDrift drift;
  nlohmann::json line;
};

// One step from the CPU chain's checkpoint k, run by `run` in `dir`: the new checkpoint against
// the CPU's checkpoint k + 1 (masks, metadata and integer tensors exactly; the rest as drift).
StepOutcome one_step(const Program& p, const Trajectory& cpu, int64_t k, const std::string& dir,
                     const std::function<int(const std::vector<std::string>&)>& run) {
  StepOutcome out;
  resumable_copy(cpu, k, dir);
  const std::string what = p.name + " step index " + std::to_string(k);
  if (run({"--resume", dir, "--stop-after", std::to_string(k + 1)}) != 0) {
    ADD_FAILURE() << what << ": the run failed";
    out.drift.mismatch("the run failed");
    return out;
  }
  const std::vector<nlohmann::json> lines = train_lines(dir);
  if (lines.size() != 1) {
    ADD_FAILURE() << what << ": " << lines.size() << " train events, not 1";
    out.drift.mismatch("no train event");
    return out;
  }
  out.line = lines[0];
  const SafetensorsFile before = SafetensorsFile::read(cpu.ckpt[static_cast<size_t>(k)]);
  const SafetensorsFile want = SafetensorsFile::read(cpu.ckpt[static_cast<size_t>(k + 1)]);
  const SafetensorsFile got = SafetensorsFile::read(dir + "/last.safetensors");
  out.drift = twins::state_drift(want, got);
  EXPECT_EQ(out.drift.mismatches, 0) << what << ": " << out.drift.first_mismatch;
  EXPECT_EQ(twins::computation_config(got), twins::computation_config(want)) << what;
  // The masks: the same fragments kept and updated on both sides, and those the Philox rule
  // says.
  const std::vector<twins::Mask> mine = step_masks(p, before, want, k), theirs = step_masks(p, before, got, k);
  for (size_t i = 0; i < p.parts.size(); ++i) {
    const twins::SmootherMeta meta = twins::smoother_meta(before, p.parts[i]);
    const std::string part = what + " (" + p.parts[i].name + ")";
    std::string first;
    EXPECT_EQ(twins::contradictions(mine[i], theirs[i], &first), 0) << part << ": the masks differ: " << first;
    const twins::MaskCheck c = twins::check_mask(theirs[i], meta, k, part);
    EXPECT_EQ(c.against_rule, 0) << c.first;
    EXPECT_GT(c.kept, 0) << part << ": no kept fragment could be told apart";
    EXPECT_GT(c.updated, 0) << part << ": no updated fragment";
  }
  return out;
}

// Every step k = 1..N-1 from the CPU chain's checkpoint, run by `run`: the report, the number of
// kink steps, and the failures of the exact checks.
Report steps_from_cpu(const Program& p, const Trajectory& cpu, const std::string& tag,
                      const std::function<int(const std::vector<std::string>&)>& run, std::vector<StateDrift>* per_step) {
  Report r;
  for (int64_t k = 1; k < kSteps; ++k) {
    const StepOutcome o = one_step(p, cpu, k, fixture().root + "/" + p.name + "_" + tag + "_step", run);
    if (o.line.is_null()) continue;
    const std::string where = "step index " + std::to_string(k);
    compare_lines(p, cpu.lines[static_cast<size_t>(k)], o.line, where, &r);
    r.add(o.drift, where);
    per_step->push_back(o.drift);
  }
  return r;
}

// The per-step tolerances, kink steps counted: failures name the step and tensor.
void expect_steps_within(const Program& p, const Report& r, const std::vector<StateDrift>& per_step) {
  const Tolerances& t = p.tol;
  EXPECT_LE(r.loss.value, t.step_loss) << "loss drift at " << r.loss.where;
  int kinks = 0;
  for (size_t i = 0; i < per_step.size(); ++i) {
    const StateDrift& d = per_step[i];
    const std::string where = "step index " + std::to_string(i + 1);
    EXPECT_LE(d.group[twins::kTeacher].value, t.teacher_exact ? 0.0 : t.step_params)
        << where << ": teacher " << d.group[twins::kTeacher].where
        << (t.teacher_exact ? " (the teacher moves before the forward, from the state both sides loaded: "
                              "its rule is written with explicit fmaf, so it must be bit-identical)"
                            : "");
    EXPECT_LE(d.group[twins::kBnStats].value, t.step_params) << where << ": " << d.group[twins::kBnStats].where;
    const bool tight = d.group[twins::kStudent].value <= t.step_params && d.group[twins::kOptimizer].value <= t.step_optim;
    if (tight) continue;
    ++kinks;
    std::printf("[ drift    ] %s %s: a kink step? student %s (%s), optimizer %s (%s)\n", p.name.c_str(), where.c_str(),
                twins::sci(d.group[twins::kStudent].value).c_str(), d.group[twins::kStudent].where.c_str(),
                twins::sci(d.group[twins::kOptimizer].value).c_str(), d.group[twins::kOptimizer].where.c_str());
    EXPECT_LE(d.group[twins::kStudent].value, t.kink_params) << where << ": " << d.group[twins::kStudent].where;
    EXPECT_LE(d.group[twins::kOptimizer].value, t.kink_optim) << where << ": " << d.group[twins::kOptimizer].where;
  }
  EXPECT_LE(kinks, t.kink_steps) << "steps whose student or optimizer state drifted past " << t.step_params << " / "
                                 << t.step_optim << " (a kink explains one; more is a bug)";
}

// ---- the CPU halves --------------------------------------------------------------------------

void cpu_half(const Program& p) {
  const Trajectory* cpu = cpu_chain(p);
  ASSERT_NE(cpu, nullptr);

  // Bit for bit: the chain (this process, resumed at every step) and one uninterrupted run in a
  // process of its own.
  const std::string whole = fixture().root + "/" + p.name + "_cpu_whole";
  ASSERT_EQ(run_apart(p, with(p.step_recipe, {"--out", whole, "--device", "cpu", "--stop-after",
                                             std::to_string(kSteps)})),
            0);
  program_runs::expect_same_run(whole, cpu->dir);

  // The masks of every step but the first (where the teacher still equals the student, so a
  // kept fragment cannot be told from an updated one), against the Philox rule.
  int64_t kept = 0, updated = 0, unknown = 0;
  for (int64_t k = 1; k < kSteps; ++k) {
    const SafetensorsFile before = SafetensorsFile::read(cpu->ckpt[static_cast<size_t>(k)]);
    const SafetensorsFile after = SafetensorsFile::read(cpu->ckpt[static_cast<size_t>(k + 1)]);
    const std::vector<twins::Mask> masks = step_masks(p, before, after, k);
    const nlohmann::json& line = cpu->lines[static_cast<size_t>(k)];
    int64_t params = 0, params_updated = 0, params_unknown = 0;
    for (size_t i = 0; i < p.parts.size(); ++i) {
      const twins::SmootherMeta meta = twins::smoother_meta(before, p.parts[i]);
      const std::string what = p.name + " step index " + std::to_string(k) + " (" + p.parts[i].name + ")";
      const twins::MaskCheck c = twins::check_mask(masks[i], meta, k, what);
      EXPECT_EQ(c.against_rule, 0) << c.first;
      kept += c.kept;
      updated += c.updated;
      unknown += c.unknown;
      params += c.params;
      params_updated += c.params_updated;
      params_unknown += c.params_unknown;
      if (meta.cosine) {  // the schedule the masks were recovered with is the one the run logged
        EXPECT_EQ(static_cast<float>(number(line, "momentum")), meta.momentum_at(k)) << what;
      }
    }
    if (p.updated_fraction_logged) {
      // The smoother's own statistics (Philox draws on the host) lie between what the masks
      // prove updated and that plus the fragments they cannot tell.
      const double logged = number(line, "updated_fraction");
      const double lo = static_cast<double>(params_updated) / static_cast<double>(params);
      const double hi = static_cast<double>(params_updated + params_unknown) / static_cast<double>(params);
      EXPECT_GE(logged, lo - 1e-12) << "step index " << k << ": logged updated_fraction";
      EXPECT_LE(logged, hi + 1e-12) << "step index " << k << ": logged updated_fraction";
    }
  }
  // The recovery told almost every fragment (it could have failed), and both kinds occurred.
  EXPECT_GT(kept, 0);
  EXPECT_GT(updated, 0);
  EXPECT_LT(unknown * 20, kept + updated + unknown) << unknown << " fragments could not be told";
  std::printf("[ masks    ] %s: steps 1..%ld: %ld fragments kept, %ld updated, %ld not told apart\n", p.name.c_str(),
              static_cast<long>(kSteps - 1), static_cast<long>(kept), static_cast<long>(updated),
              static_cast<long>(unknown));

  // The checkpoint resumed and saved at once, in another process, on the CPU: unchanged.
  const std::string again = fixture().root + "/" + p.name + "_cpu_again";
  resumable_copy(*cpu, kSteps, again);
  ASSERT_EQ(run_apart(p, {"--resume", again, "--device", "cpu", "--stop-after", std::to_string(kSteps)}), 0);
  program_runs::expect_same_checkpoint(cpu->ckpt[kSteps], again + "/last.safetensors");
}

TEST(Twins, ByolCpuHalfIsReproducibleAndItsMasksAreThePhiloxMasks) { cpu_half(byol_program()); }
TEST(Twins, FixMatchCpuHalfIsReproducibleAndItsMasksAreThePhiloxMasks) { cpu_half(fixmatch_program()); }

// The OpenBLAS kernel family that differs most from the one this process runs: Prescott's SSE3
// kernels (no FMA), or Haswell's when Prescott is what runs; "" when neither can run here.
std::string other_blas_core() {
  const std::string now = kernels::cpu::blas_core_name();
  if (now != "Prescott") return "Prescott";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

// The measurement the tolerances come from: the same steps with another BLAS kernel family,
// each in a process of its own, against the CPU chain. Every tolerance must be at least 10x
// what this measures (the GPU differs from the CPU in more places than a BLAS kernel does).
void tolerances_cover_cpu_drift(const Program& p) {
  const std::string core = other_blas_core();
  if (core.empty()) GTEST_SKIP() << "no second OpenBLAS kernel family can run on this CPU";
  const Trajectory* cpu = cpu_chain(p);
  ASSERT_NE(cpu, nullptr);
  const Tolerances& t = p.tol;
  constexpr double kMargin = 10;
  ScopedEnv env("OPENBLAS_CORETYPE", core);
  const std::string title = p.name + ", OpenBLAS " + kernels::cpu::blas_core_name() + " against " + core;

  // One step from each CPU checkpoint.
  std::vector<StateDrift> per_step;
  const Report steps =
      steps_from_cpu(p, *cpu, "blas", [&](const std::vector<std::string>& a) { return run_apart(p, a); }, &per_step);
  steps.print(title + ", one step from the same state");
  EXPECT_LE(steps.loss.value * kMargin, t.step_loss) << steps.loss.where;
  EXPECT_LE(steps.group[twins::kBnStats].value * kMargin, t.step_params) << steps.group[twins::kBnStats].where;
  EXPECT_LE(steps.group[twins::kTeacher].value * kMargin, t.teacher_exact ? 0.0 : t.step_params)
      << steps.group[twins::kTeacher].where;
  EXPECT_LE(steps.group[twins::kStudent].value * kMargin, t.step_params) << steps.group[twins::kStudent].where;
  EXPECT_LE(steps.group[twins::kOptimizer].value * kMargin, t.step_optim) << steps.group[twins::kOptimizer].where;

  // N steps from the seed, the run recipe, against the same on this process's kernels.
  const std::string* here = whole_run(p, "cpu");
  ASSERT_NE(here, nullptr);
  const std::string there = fixture().root + "/" + p.name + "_whole_blas";
  ASSERT_EQ(run_apart(p, with(p.run_recipe, {"--out", there, "--device", "cpu", "--stop-after",
                                             std::to_string(kSteps)})),
            0);
  Report run;
  const std::vector<nlohmann::json> a = train_lines(*here), b = train_lines(there);
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), static_cast<size_t>(kSteps));
  for (size_t k = 0; k < a.size(); ++k) compare_lines(p, a[k], b[k], "step index " + std::to_string(k), &run);
  const StateDrift final_drift = twins::state_drift(SafetensorsFile::read(*here + "/last.safetensors"),
                                                    SafetensorsFile::read(there + "/last.safetensors"));
  EXPECT_EQ(final_drift.mismatches, 0) << final_drift.first_mismatch;
  run.add(final_drift, "after step " + std::to_string(kSteps) + ":");
  run.print(title + ", " + std::to_string(kSteps) + " steps from the seed");
  EXPECT_LE(run.loss.value * kMargin, t.run_loss) << run.loss.where;
  for (int g : {twins::kTeacher, twins::kStudent, twins::kBnStats})
    EXPECT_LE(run.group[g].value * kMargin, t.run_params) << run.group[g].where;
  EXPECT_LE(run.group[twins::kOptimizer].value * kMargin, t.run_optim) << run.group[twins::kOptimizer].where;
}

TEST(Twins, ByolTolerancesCoverCpuDriftUnderAnotherBlasKernel) { tolerances_cover_cpu_drift(byol_program()); }
TEST(Twins, FixMatchTolerancesCoverCpuDriftUnderAnotherBlasKernel) { tolerances_cover_cpu_drift(fixmatch_program()); }

// ---- the GPU halves --------------------------------------------------------------------------

// Skips the test, with the reason, where no GPU can run it.
#define TWIN_DEVICE_OR_SKIP(device, what)                                                  \
  std::string reason_;                                                                     \
  const std::string device = twin_device(&reason_);                                        \
  if (device.empty()) {                                                                    \
    GTEST_SKIP() << what << " not run: " << reason_                                        \
                 << " (its CPU half runs everywhere: Twins.*CpuHalf*, Twins.*Tolerances*)"; \
  }

// One step from every CPU checkpoint, run by `run`, within the step tolerances.
void check_steps(const Program& p, const std::string& tag, const std::string& title,
                 const std::function<int(const std::vector<std::string>&)>& run) {
  const Trajectory* cpu = cpu_chain(p);
  ASSERT_NE(cpu, nullptr);
  std::vector<StateDrift> per_step;
  const Report r = steps_from_cpu(p, *cpu, tag, run, &per_step);
  r.print(title);
  expect_steps_within(p, r, per_step);
}

// One step on the GPU from every CPU checkpoint.
void cuda_steps(const Program& p, const std::string& device) {
  check_steps(p, device, p.name + ", " + device + " against cpu, one step from the same state",
              [&](const std::vector<std::string>& a) { return run_here(p, with(a, {"--device", device})); });
}

TEST(Twins, ByolCudaStepsMatchCpuSteps) {
  TWIN_DEVICE_OR_SKIP(device, "byol's CUDA-vs-CPU steps");
  cuda_steps(byol_program(), device);
}
TEST(Twins, FixMatchCudaStepsMatchCpuSteps) {
  TWIN_DEVICE_OR_SKIP(device, "fixmatch's CUDA-vs-CPU steps");
  cuda_steps(fixmatch_program(), device);
}

// Run directory `other` against the CPU's run of the run recipe, within the run tolerances.
void check_run(const Program& p, const std::string& other, const std::string& title) {
  const std::string* cpu = whole_run(p, "cpu");
  ASSERT_NE(cpu, nullptr);
  const std::vector<nlohmann::json> a = train_lines(*cpu), b = train_lines(other);
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), static_cast<size_t>(kSteps));
  Report r;
  for (size_t k = 0; k < a.size(); ++k) compare_lines(p, a[k], b[k], "step index " + std::to_string(k), &r);
  const SafetensorsFile want = SafetensorsFile::read(*cpu + "/last.safetensors");
  const SafetensorsFile got = SafetensorsFile::read(other + "/last.safetensors");
  const StateDrift d = twins::state_drift(want, got);
  r.add(d, "after step " + std::to_string(kSteps) + ":");
  r.print(title);
  EXPECT_EQ(d.mismatches, 0) << d.first_mismatch;
  EXPECT_EQ(twins::computation_config(got), twins::computation_config(want));
  const Tolerances& t = p.tol;
  EXPECT_LE(r.loss.value, t.run_loss) << r.loss.where;
  for (int g : {twins::kTeacher, twins::kStudent, twins::kBnStats})
    EXPECT_LE(r.group[g].value, t.run_params) << r.group[g].where;
  EXPECT_LE(r.group[twins::kOptimizer].value, t.run_optim) << r.group[twins::kOptimizer].where;
}

// N steps on the GPU from the seed against N steps on the CPU.
void cuda_run(const Program& p, const std::string& device) {
  const std::string* gpu = whole_run(p, device, /*gpu_side=*/true);
  ASSERT_NE(gpu, nullptr);
  check_run(p, *gpu, p.name + ", " + device + " against cpu, " + std::to_string(kSteps) + " steps from the seed");
}

TEST(Twins, ByolCudaRunMatchesCpuRun) {
  TWIN_DEVICE_OR_SKIP(device, "byol's CUDA-vs-CPU run");
  cuda_run(byol_program(), device);
}
TEST(Twins, FixMatchCudaRunMatchesCpuRun) {
  TWIN_DEVICE_OR_SKIP(device, "fixmatch's CUDA-vs-CPU run");
  cuda_run(fixmatch_program(), device);
}

// Stopped after 7 and 13 steps and resumed, each part in a fresh process, on the GPU: the same
// run as the uninterrupted one, bit for bit. Every algorithm the programs run on the GPU is
// deterministic: cuDNN's are chosen so (kernels/cuda/conv.cu: with none deterministic for a
// shape the run stops with an error), cuBLAS's sgemm is, and the reductions of the engine's own
// kernels have a fixed order (the atomics left are integer counts). Should a chosen cuDNN
// algorithm refuse to run, conv.cu moves to the next deterministic one and says so on stderr;
// if this fails, look for that line first.
void cuda_resume(const Program& p, const std::string& device) {
  const std::string* whole = whole_run(p, device, /*gpu_side=*/true);
  ASSERT_NE(whole, nullptr);
  const std::string parts = fixture().root + "/" + p.name + "_parts_" + device;
  ASSERT_EQ(run_apart(p, with(p.run_recipe, {"--out", parts, "--device", device, "--stop-after", "7"})), 0);
  ASSERT_EQ(run_apart(p, {"--resume", parts, "--device", device, "--stop-after", "13"}), 0);
  ASSERT_EQ(run_apart(p, {"--resume", parts, "--device", device, "--stop-after", std::to_string(kSteps)}), 0);
  // How far apart, should they not be identical: at rounding level (within the run tolerances)
  // points to a nondeterministic algorithm, far beyond it to state a resume does not restore.
  Report r;
  r.add(twins::state_drift(SafetensorsFile::read(*whole + "/last.safetensors"),
                           SafetensorsFile::read(parts + "/last.safetensors")),
        "after step " + std::to_string(kSteps) + ":");
  r.print(p.name + ", " + device + ", stopped at 7 and 13 and resumed, against uninterrupted (0 expected)");
  program_runs::expect_same_run(*whole, parts);
}

TEST(Twins, ByolCudaResumeIsBitIdentical) {
  TWIN_DEVICE_OR_SKIP(device, "byol's CUDA resume");
  cuda_resume(byol_program(), device);
}
TEST(Twins, FixMatchCudaResumeIsBitIdentical) {
  TWIN_DEVICE_OR_SKIP(device, "fixmatch's CUDA resume");
  cuda_resume(fixmatch_program(), device);
}

// The GPU's final checkpoint resumed and saved at once on the CPU, then that on the GPU: every
// tensor (weights, BN statistics, optimizer state, loader position) and every metadata entry
// round-trips through both devices unchanged.
void cuda_checkpoint_round_trip(const Program& p, const std::string& device) {
  const std::string* gpu = whole_run(p, device, /*gpu_side=*/true);
  ASSERT_NE(gpu, nullptr);
  const std::string dir = fixture().root + "/" + p.name + "_round_trip";
  fs::remove_all(dir);
  fs::copy(*gpu, dir, fs::copy_options::recursive);
  const std::string original = dir + "/from_the_gpu.safetensors";
  fs::copy_file(dir + "/last.safetensors", original);
  for (const std::string& on : {std::string("cpu"), device}) {
    ASSERT_EQ(run_here(p, {"--resume", dir, "--device", on, "--stop-after", std::to_string(kSteps)}), 0) << on;
    const StateDrift d = twins::state_drift(SafetensorsFile::read(original), SafetensorsFile::read(dir + "/last.safetensors"));
    EXPECT_EQ(d.mismatches, 0) << "saved on " << on << ": " << d.first_mismatch;
    for (int g = 0; g < twins::kGroups; ++g)
      EXPECT_EQ(d.group[g].value, 0.0) << "saved on " << on << ": " << twins::group_name(g) << ": " << d.group[g].where;
  }
}

TEST(Twins, ByolCudaCheckpointLoadsOnCpuAndBack) {
  TWIN_DEVICE_OR_SKIP(device, "byol's CUDA checkpoint round trip");
  cuda_checkpoint_round_trip(byol_program(), device);
}
TEST(Twins, FixMatchCudaCheckpointLoadsOnCpuAndBack) {
  TWIN_DEVICE_OR_SKIP(device, "fixmatch's CUDA checkpoint round trip");
  cuda_checkpoint_round_trip(fixmatch_program(), device);
}

}  // namespace
}  // namespace tessera
