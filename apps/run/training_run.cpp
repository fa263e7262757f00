#include "apps/run/training_run.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>

#include "apps/run/distributed_run.h"
#include "apps/run/features.h"
#include "engine/check.h"
#include "engine/distributed.h"

namespace tessera {

int run_program(const char* program, const std::function<int()>& body) {
  // One of several ranks: the error ends the job on every rank, with this rank's message
  // (MPI_Abort), rather than leaving the others waiting in a collective.
  auto fail = [&](const char* what, int code) {
    if (dist::Communicator* w = dist::started_world(); w && w->size() > 1) {
      dist::set_program_name(program);
      w->abort(what, code);
    }
    std::fprintf(stderr, "%s: %s\n", program, what);
    return code;
  };
  try {
    return body();
  } catch (const UsageError& e) {
    return fail(e.what(), 2);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
}

TrainingRun::TrainingRun(std::string program, Options& options, RunOptions& run)
    : program_(std::move(program)), check_ops_(run.nonfinite_check == "ops") {
  if (run.debug) show_check_locations(true);
  if (run.resume.empty()) {
    resolve_run_paths(run, program_);
    // An existing directory: its lock first, so a run still going there is named as such.
    if (std::filesystem::is_directory(run.out)) take_lock(run.out);
    dir_ = RunDirectory::for_new_run(run.out);
    set_cuda_options(cuda_options_of(run));
    return;
  }
  dir_ = RunDirectory::for_resume(run.resume);
  take_lock(dir_.dir());  // before reading the checkpoint another process may be writing
  if (!run.out.empty() && run.out != dir_.dir())
    throw UsageError(cat("--out ", run.out, ": a resumed run continues in its own directory (", dir_.dir(),
                         "); leave --out out"));
  checkpoint_ = std::make_unique<SafetensorsFile>(SafetensorsFile::read(dir_.checkpoint()));
  const SafetensorsFile& f = *checkpoint_;
  if (!f.metadata().count(kProgramKey) || !f.metadata().count(kConfigKey) || !f.metadata().count(kStepKey))
    throw Error(cat(f.path(), ": not a training checkpoint (no ", kProgramKey, " / ", kConfigKey, " / ",
                    kStepKey, " metadata)"));
  if (f.metadata(kProgramKey) != program_)
    throw Error(cat(f.path(), ": a ", f.metadata(kProgramKey), " checkpoint, not ", program_));
  const nlohmann::json saved = nlohmann::json::parse(f.metadata(kConfigKey), nullptr, false);
  if (saved.is_discarded() || !saved.is_object())
    throw Error(cat(f.path(), ": the saved configuration is not a JSON object"));
  try {
    start_step_ = std::stoll(f.metadata(kStepKey));
  } catch (const std::exception&) {
    throw Error(cat(f.path(), ": step '", f.metadata(kStepKey), "' is not an integer"));
  }
  saved_step_ = start_step_;

  // The command line and a config file may not change what the run computes. Of what they may
  // change, the thread count and the CPU tier change how sums are rounded: said.
  const nlohmann::json now = options.to_json();
  for (auto it = saved.begin(); it != saved.end(); ++it) {
    const std::string& flag = it.key();
    if (!options.set_by_user(flag) || !now.contains(flag) || now[flag] == it.value()) continue;
    const std::string source = options.source(flag) == "command line" ? "" : cat(" (", options.source(flag), ")");
    if (flag == "threads" || flag == "cpu-kernels")
      std::fprintf(stderr, "%s: --%s %s%s differs from the run's %s: it continues, but not bit-identically\n",
                   program_.c_str(), flag.c_str(), now[flag].dump().c_str(), source.c_str(), it.value().dump().c_str());
    if (changeable_on_resume(flag) || distributed_changeable_on_resume(flag)) continue;
    // Moved data may follow the run: check_data() compares what it holds with the checkpoint's.
    if (flag == "data" && f.metadata().count(kDataKey)) {
      data_moved_from_ = it.value().dump();
      continue;
    }
    throw UsageError(cat("--", flag, " ", now[flag].dump(), source, " differs from the run being resumed (",
                         it.value().dump(), " in ", f.path(), "); a resumed run keeps its configuration"));
  }
  nlohmann::json restored = nlohmann::json::object();
  for (auto it = saved.begin(); it != saved.end(); ++it)
    if (!per_invocation(it.key())) restored[it.key()] = it.value();
  options.apply_json(restored, f.path());
  options.validate();
  run.out = dir_.dir();
  set_cuda_options(cuda_options_of(run));  // the saved --math, not the default
}

const SafetensorsFile& TrainingRun::checkpoint() const {
  TS_CHECK(checkpoint_, "not resuming: there is no checkpoint");
  return *checkpoint_;
}

void TrainingRun::take_lock(const std::string& dir) {
  // One lock per job: rank 0 holds it for all ranks (they write nothing in the directory).
  if (!dist::world().root()) return;
  std::string stale;
  lock_ = RunLock::acquire(dir, &stale);
  if (!stale.empty())
    std::fprintf(stderr, "%s: took over the lock of a run that is no longer running (%s, %s/%s)\n", program_.c_str(),
                 stale.c_str(), dir.c_str(), RunLock::kFile);
}

void TrainingRun::begin(const nlohmann::json& config) {
  config_ = config;
  // Rank 0 alone writes the run directory. The barrier first: every rank has checked the
  // directory (for_new_run refuses one that holds a run) before rank 0 starts filling it.
  dist::Communicator& ranks = dist::world();
  ranks.barrier("the start of the run");
  if (!ranks.root()) {
    metrics_ = MetricsLog("/dev/null", -1);
    install_stop_handler();
    return;
  }
  dir_.create();
  if (!lock_.held()) {
    take_lock(dir_.dir());
    // Another process may have started a run here between our check and our lock.
    if (!resuming()) RunDirectory::for_new_run(dir_.dir());
  }
  if (!resuming()) {
    dir_.write_config(config_);
    config_written_ = true;
  }
  metrics_ = MetricsLog(dir_.path(RunDirectory::kMetrics), resuming() ? start_step_ : -1);
  install_stop_handler();
}

std::string TrainingRun::last_checkpoint_note() const {
  if (saved_step_ < 0) return cat("no checkpoint was written before it (", dir_.checkpoint(), " does not exist)");
  return cat("the last checkpoint, ", dir_.checkpoint(), ", holds step ", saved_step_);
}

void TrainingRun::save(SafetensorsWriter& w, int64_t step) {
  if (guard_) guard_->before_save(w, last_checkpoint_note());
  if (!dist::world().root()) return;  // rank 0's state is the run's (docs/DISTRIBUTED.md)
  if (const std::string bad = w.first_nonfinite(); !bad.empty())
    throw Error(cat(dir_.checkpoint(), ": not saving step ", step, ": ", bad, " is not finite; ", last_checkpoint_note()));
  w.add_metadata(kProgramKey, program_);
  w.add_metadata(kConfigKey, config_.dump());
  w.add_metadata(kStepKey, std::to_string(step));
  if (!data_.empty()) w.add_metadata(kDataKey, data_);
  if (!config_written_) {  // a resumed run's first save; before the checkpoint, which it describes
    dir_.write_config(config_);
    config_written_ = true;
  }
  w.write(dir_.checkpoint());
  saved_step_ = step;
}

void TrainingRun::check_data(const std::vector<const data::Dataset*>& splits) {
  data_.clear();
  for (const data::Dataset* d : splits) data_ += cat(data_.empty() ? "" : "; ", d->name, ": ", data::fingerprint(*d));
  if (!resuming() || !checkpoint_->metadata().count(kDataKey)) return;
  const std::string& saved = checkpoint_->metadata(kDataKey);
  if (saved != data_)
    throw Error(cat("the data is not what the run trained on: ", checkpoint_->path(), " holds \"", saved,
                    "\", found \"", data_, "\"",
                    data_moved_from_.empty() ? "" : cat(" (the run's --data was ", data_moved_from_, ")")));
  if (!data_moved_from_.empty())
    std::fprintf(stderr, "%s: the data moved (the run's --data was %s); its contents are the same\n", program_.c_str(),
                 data_moved_from_.c_str());
}

int TrainingRun::final_evaluation_begins() {
  return stop_signals_exit(cat(program_, ": stopped during the final evaluation; ", last_checkpoint_note(),
                               "; evaluate it with --resume ", dir_.dir(), "\n"),
                           lock_.held() ? dir_.path(RunLock::kFile) : std::string());
}

void TrainingRun::report_stop(int64_t step, int64_t total_steps) const {
  std::fprintf(stderr, "%s: stopped at step %ld of %ld; checkpoint %s; continue with --resume %s\n", program_.c_str(),
               static_cast<long>(step), static_cast<long>(total_steps), dir_.checkpoint().c_str(), dir_.dir().c_str());
}

void TrainingRun::write_final(nlohmann::json event, const std::string& line,
                              std::chrono::steady_clock::time_point started) {
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  event["wall_s"] = wall;
  metrics_.write("final", event);
  std::printf("%s; wall %dm%02ds\n", line.c_str(), static_cast<int>(wall) / 60, static_cast<int>(wall) % 60);
  std::fflush(stdout);
}

void TrainingRun::attach(NonfiniteGuard& guard) {
  guard_ = &guard;
  if (check_ops_) guard.monitor().check_ops(start_step_);
}

TrainTest load_train_test(TrainingRun& run, const std::string& data_flag, int64_t image_size) {
  const data::DataSpec spec = data::parse_data_spec(data_flag);
  const data::DataOptions options = data::data_options(spec, image_size);
  TrainTest d{data::load_dataset(spec, data::Split::Train, options), data::load_dataset(spec, data::Split::Test, options)};
  data::match_training_split(d.train, &d.test);
  require_two_classes(d.train, data_flag);  // every program's evaluation classifies
  run.check_data({&d.train, &d.test});  // on resume: the same images, wherever they are now
  return d;
}

EpochSchedule epoch_schedule(const data::Dataset& train, int64_t batch_size, int64_t steps, int64_t epochs,
                             double warmup_epochs) {
  if (batch_size > train.size)
    throw UsageError(cat("--batch-size ", batch_size, " is larger than the training set (", train.size, " images in ",
                         train.name, ")"));
  EpochSchedule s;
  s.steps_per_epoch = train.size / batch_size;
  s.total_steps = steps > 0 ? steps : s.steps_per_epoch * epochs;
  s.warmup_steps = static_cast<int64_t>(std::llround(warmup_epochs * static_cast<double>(s.steps_per_epoch)));
  if (s.warmup_steps >= s.total_steps)
    throw UsageError(cat("--warmup-epochs ", warmup_epochs, " is ", s.warmup_steps,
                         " steps, not shorter than the run (", s.total_steps, " steps)"));
  return s;
}

}  // namespace tessera
