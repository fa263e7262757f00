// The life of one training run, shared by byol, fixmatch and moco:
//
//   int main(argc, argv) { return run_program("byol", [&] { return byol_main(argc, argv); }); }
//
//   Options o(...); RunOptions r; add_run_options(o, r); ...; if (!o.parse(argc, argv)) return 0;
//   TrainingRun run("byol", o, r);      // --resume: config from the checkpoint, flags checked
//   ... load data, build models; if (run.resuming()) load their state from run.checkpoint() ...
//   run.begin(o.to_json());             // only now: mkdir, config.json, metrics.jsonl
//   for (step = run.start_step(); step < total && !stop_requested(); ++step) { ... }
//   SafetensorsWriter w; ...add state...; run.save(w, step);
//
// One process per run directory: DIR/run.lock is taken as soon as the directory exists (at
// once on --resume or an existing --out, else by begin()) and held until the run ends; a
// second process is refused with the holder's pid and host.
//
// A resumed run keeps the configuration saved in its checkpoint: a flag given on the command
// line that would change the computation (architecture, lr, smoothing, seed, ...) and differs
// from the saved value is a UsageError naming it; flags listed by changeable_on_resume()
// (device, logging, checkpoint interval, evaluation) may change.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/nonfinite.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/run_lock.h"
#include "data/dataset.h"
#include "engine/checkpoint.h"

namespace tessera {

// Runs a program's body and turns exceptions into the project's exit codes: UsageError ->
// "program: message" and 2, any other error -> "program: message" and 1.
int run_program(const char* program, const std::function<int()>& body);

class TrainingRun {
 public:
  // Metadata keys of the run's own state in last.safetensors.
  static constexpr const char* kProgramKey = "run.program";
  static constexpr const char* kConfigKey = "run.config";
  static constexpr const char* kStepKey = "run.step";
  static constexpr const char* kDataKey = "run.data";  // data::fingerprint of each split

  TrainingRun(std::string program, Options& options, RunOptions& run);

  bool resuming() const { return checkpoint_ != nullptr; }
  const SafetensorsFile& checkpoint() const;  // the file resumed from
  int64_t start_step() const { return start_step_; }
  const RunDirectory& dir() const { return dir_; }

  // The splits the run reads, once loaded: their fingerprints go into every checkpoint. On
  // resume they must match the checkpoint's (an Error naming both otherwise), and only then
  // may --data differ from the saved one (the files moved).
  void check_data(const std::vector<const data::Dataset*>& splits);
  // Creates the directory, writes config.json (on resume: at the first save, so a resume that
  // fails leaves it as it was) and opens metrics.jsonl (on resume, events past the checkpoint's
  // step are dropped). Installs the Ctrl-C handler.
  void begin(const nlohmann::json& config);
  MetricsLog& metrics() { return metrics_; }

  // Adds the run's metadata (program, configuration, step) to `w` and writes
  // DIR/last.safetensors atomically. First it reads the non-finite guard (when one is
  // attached: in stop mode a non-finite step since the last read ends the run here, before
  // anything is written) and scans every f32 tensor of `w`: a checkpoint never holds NaN or
  // infinity (an Error naming the tensor instead).
  void save(SafetensorsWriter& w, int64_t step);
  // The guard save() reads; it must outlive the run's saves. With --nonfinite-check ops its
  // monitor checks every op from here on (NonfiniteMonitor::check_ops).
  void attach(NonfiniteGuard& guard);
  // Call before the final evaluation, which writes nothing until its "final" line: from here on
  // Ctrl-C / SIGTERM ends the process at once (status 128 + the signal) saying that the saved run
  // is evaluated by resuming it. Returns 0, or that status when a stop came before this call.
  int final_evaluation_begins();
  // Where the last good state is, for messages: "the last checkpoint, DIR/last.safetensors,
  // holds step N" or that there is none yet.
  std::string last_checkpoint_note() const;
  // After the save of a run stopped before its end (Ctrl-C, --stop-after): the line on stderr
  // that says where it stopped and how to continue.
  void report_stop(int64_t step, int64_t total_steps) const;
  // The end of the final evaluation: `event` with wall_s (seconds since `started`) becomes the
  // "final" metrics line, and "<line>; wall XmYYs" goes to stdout.
  void write_final(nlohmann::json event, const std::string& line, std::chrono::steady_clock::time_point started);

 private:
  std::string program_;
  RunDirectory dir_;
  std::unique_ptr<SafetensorsFile> checkpoint_;
  int64_t start_step_ = 0;
  int64_t saved_step_ = -1;  // the step of DIR/last.safetensors; -1: none yet
  NonfiniteGuard* guard_ = nullptr;
  bool check_ops_ = false;  // --nonfinite-check ops
  RunLock lock_;  // DIR/run.lock for the life of the run (apps/run/run_lock.h)
  void take_lock(const std::string& dir);
  nlohmann::json config_;
  bool config_written_ = false;  // config.json holds config_
  std::string data_;             // check_data's fingerprints, for kDataKey
  std::string data_moved_from_;  // the saved --data when this invocation gives another
  MetricsLog metrics_;
};

// The train and test splits of --data as every program loads them: the test split matched to
// the train split (data::match_training_split), a labeled train split of one class refused
// (require_two_classes), both checked against a resumed checkpoint's fingerprints
// (TrainingRun::check_data) before anything is written.
struct TrainTest {
  data::Dataset train, test;
};
TrainTest load_train_test(TrainingRun& run, const std::string& data_flag, int64_t image_size);

// The length of an epoch-based run (byol, moco): whole batches per epoch (the rest of an epoch
// is skipped), --steps overriding epochs x that, the warm-up rounded to whole steps.
// UsageErrors: a batch larger than the training set, a warm-up not shorter than the run.
struct EpochSchedule {
  int64_t steps_per_epoch = 0, total_steps = 0, warmup_steps = 0;
};
EpochSchedule epoch_schedule(const data::Dataset& train, int64_t batch_size, int64_t steps, int64_t epochs,
                             double warmup_epochs);

}  // namespace tessera
