// What every training program does around its step, written once (byol and fixmatch):
//
//   RunOptions       the flags they share (--device, --seed, --out, --resume, --save-every, ...)
//   RunDirectory     DIR/config.json, DIR/metrics.jsonl, DIR/last.safetensors; a new run
//                    refuses a directory that already holds one; resuming reopens it
//   MetricsLog       one JSON object per line; on resume, events past the checkpoint's step
//                    (written by a run that was killed after its last save) are dropped, so
//                    the log of a resumed run reads like the uninterrupted one
//   Progress         the terminal line: step, loss, images/s, data-wait share, ETA
//   StepTimer        images/s and the share of wall time spent waiting for data
//   stop_requested() Ctrl-C / SIGTERM: a flag the loop checks between steps, so the program
//                    saves a checkpoint and exits cleanly; a second Ctrl-C aborts at once
//
// Order of work that keeps bad input from touching disk: parse flags (UsageError), check the
// output directory is usable, load data and build models (Error), load a resume checkpoint
// and compare it with the flags; only then create the directory and write into it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "engine/device.h"

namespace tessera {

struct RunOptions {
  std::string device = "auto";
  int64_t seed = 0;
  std::string out;      // default: runs/<program>-<UTC time>
  std::string resume;   // a run directory or its last.safetensors
  int64_t save_every = 500;   // steps between checkpoints (and one at the end)
  int64_t log_every = 20;     // steps between metrics lines
  int threads = 0;            // CPU threads (0: OpenMP's default)
  bool debug = false;                 // --debug: source locations in check messages
  std::string on_nonfinite = "stop";  // --on-nonfinite stop|skip (apps/run/nonfinite.h)
  std::string nonfinite_check = "grads";  // --nonfinite-check grads|ops (likewise)
  // "A:B": time every kernel of steps A..B-1. The loop makes
  //   profile::Profiler prof(profile::StepWindow::parse(run.profile_steps), device, dir);
  // and calls prof.begin_step(k) / prof.end_step(k) around each step (engine/profile.h).
  std::string profile_steps;
  // CPU kernel tier, reference | fast (engine/cpu_kernels.h); default $TESSERA_CPU_KERNELS or
  // fast. Applied by apply_cpu_kernels(); it changes float rounding, not the method, so a run
  // may resume on the other tier (bit-identical resumption needs the same one).
  std::string cpu_kernels;

  // How the CUDA backend computes (engine/device.h, CudaOptions); TrainingRun applies them.
  std::string math = "pytorch";        // --math pytorch|fp32|tf32
  bool allow_nondeterministic = false; // --allow-nondeterministic
  bool sync_check = false;             // --sync-check
};
void add_run_options(Options& o, RunOptions& r);
CudaOptions cuda_options_of(const RunOptions& r);
// Sets the CPU kernel tier from r.cpu_kernels and returns the line to print ("cpu kernels:
// fast (oneDNN 2.6.3 ...)"; a build without oneDNN runs the reference and says why).
std::string apply_cpu_kernels(const RunOptions& r);
// "12.34": the two decimals the programs print percentages with.
std::string fixed2(double v);
// Fills r.out with the default name when empty; call after parse().
void resolve_run_paths(RunOptions& r, const std::string& program);

// Options whose value may differ between a run and its resumption (they do not change the
// computation): everything else must match the checkpoint's configuration.
bool changeable_on_resume(const std::string& flag);
// Options that belong to one invocation (--stop-after, --eval-only, --out, ...): a resumed run
// does not take them from the checkpoint's configuration.
bool per_invocation(const std::string& flag);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
void write_file_atomic(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);
bool path_exists(const std::string& path);

// Tools that write one file (init, embed, augment-grid): a UsageError when `--flag path` would
// replace one of `inputs` (a file, or any file under a folder such as a data set's) or a file of
// a training run (last.safetensors, backbone.safetensors, config.json, metrics.jsonl, run.lock,
// mosaic-*.json in a directory holding config.json). Other files are replaced, as torch.save does.
void refuse_to_replace(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs = {});

class RunDirectory {
 public:
  static constexpr const char* kCheckpoint = "last.safetensors";
  static constexpr const char* kConfig = "config.json";
  static constexpr const char* kMetrics = "metrics.jsonl";

  // A new run: `dir` must not hold a run already (a config.json or a checkpoint). Nothing is
  // created; call create() once everything else has been checked.
  static RunDirectory for_new_run(const std::string& dir);
  // An existing run: `dir_or_file` is the run directory or a checkpoint inside it.
  static RunDirectory for_resume(const std::string& dir_or_file);

  void create() const;  // mkdir -p
  const std::string& dir() const { return dir_; }
  const std::string& checkpoint() const { return checkpoint_; }
  std::string path(const std::string& file) const { return dir_ + "/" + file; }
  void write_config(const nlohmann::json& config) const;

 private:
  std::string dir_, checkpoint_;
};

class MetricsLog {
 public:
  MetricsLog() = default;
  // Opens DIR/metrics.jsonl for appending. When `keep_through_step` >= 0 the existing lines
  // with a larger "step", the "final" event and lines that are not JSON objects are dropped
  // first (resume), with a warning for each line that is not JSON.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  MetricsLog(MetricsLog&& o) noexcept;
  MetricsLog& operator=(MetricsLog&& o) noexcept;

  // Writes one event: {"event": name, ...fields} as one line, written at once so a killed run
  // keeps it; a failed write leaves no partial line behind.
  void write(const std::string& event, nlohmann::json fields);

 private:
  int fd_ = -1;  // opened O_APPEND: each line is one write at the end of the file
  std::string path_;
};

class StepTimer {
 public:
  StepTimer();
  void data_begin();
  void data_end();
  void step_end(int64_t images);
  // Since the last call: images per second and the share of time spent waiting for data.
  // On CUDA the loader's upload of batch k waits for the GPU to be done with batch k - 2 (its
  // device buffer), so with the GPU as the bottleneck this wait is GPU time, not the input
  // pipeline: compare it with a run whose loader is known to keep up before blaming the data.
  void take(double* images_per_s, double* data_wait_share);

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point window_start_, data_start_;
  double data_seconds_ = 0;
  int64_t images_ = 0;
};

class Progress {
 public:
  Progress(int64_t total_steps, int64_t first_step);
  // Redraws the line (on a terminal; elsewhere prints a line every `every` calls).
  void update(int64_t step, double loss, double images_per_s, double data_wait, const std::string& extra = "");
  void print(const std::string& line);  // a line of its own, without tearing the progress line
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  int64_t total_, first_;
  Clock::time_point start_;
  bool tty_, open_ = false;
};

// Ctrl-C and SIGTERM. A training program's first act (its main) is take_stop_signals(): the two
// signals are blocked in its thread and so in every thread it makes after, and one thread of
// their own takes them (sigwait). No handler then ever runs on a thread that computes: the
// kernel writes a handler's frame below the interrupted stack pointer, and oneDNN 2.6's JIT
// sgemm points that register into the heap while it runs (oneDNN issue 4845, fixed upstream by
// PR 4855), so a Ctrl-C there corrupted the heap (seen here: 3 aborts in 60 stops in the first
// step, docs/RELIABILITY.md). Until install_stop_handler() the first signal ends the process as if
// nothing handled it; after, SIGINT / SIGTERM -> stop_requested() becomes true and the second
// signal ends the process. install_stop_handler() also installs the handler itself for threads
// that do not block the signals (a test running a program's main in its own process).
void take_stop_signals();
void install_stop_handler();
bool stop_requested();
void request_stop();        // what the handler does; tests call it to simulate Ctrl-C
void clear_stop_request();  // tests: back to running
// For work that saves nothing, where a stop has nothing to wait for (the final evaluation): from
// here on the first SIGINT / SIGTERM removes `remove_first` (when not empty: the run's lock file,
// whose flock the kernel drops at exit), writes `message` (up to 1 KiB) to stderr and ends the
// process with status 128 + the signal's number. When a stop was requested before the call,
// writes `message` and returns that status for the caller to return (it removes nothing: the
// caller unwinds); 0 otherwise.
int stop_signals_exit(const std::string& message, const std::string& remove_first = "");

}  // namespace tessera
