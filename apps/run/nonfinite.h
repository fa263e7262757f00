// --on-nonfinite stop|skip: what a training program does when a step's loss or a gradient is
// NaN or infinite. The step itself never waits: engine/nonfinite.h's monitor checks the loss
// and the gradient arenas on the device after every backward and keeps the first finding in
// device memory. This guard reads it where the programs already read the device: at every
// metrics line and before every checkpoint (TrainingRun::save calls before_save), as
// FixMatch reads its per-step losses.
//
//   stop (default)  the first read after a non-finite step ends the run: an Error (exit 1)
//                   naming the step and the tensor (the loss, or which parameter's gradient),
//                   and no checkpoint is written after it, so last.safetensors keeps the last
//                   state from before the step. With --nonfinite-check ops the message also
//                   names the first op, in execution order, whose output or gradient went
//                   non-finite (engine/nonfinite.h); without it, it says how to get that.
//                   Its cost: one read of every op output and gradient and one launch for
//                   each; on the CPU (BYOL, ResNet-18 width 8, batch 32, 1 thread, 40 steps)
//                   6.19 s of CPU against 6.05 s without it (+2%, same losses); on a GPU, a
//                   few hundred small launches per step more: not measured yet.
//   skip            the step's updates are dropped on the device: the optimizers (and the
//                   FixMatch teacher, which follows the optimizer) read the record's skip flag
//                   and leave weights and state as they were; MoCo does not enqueue the step's
//                   keys. Why a flag the kernels read rather than a zero learning rate: a zero
//                   lr still moves momentum buffers, AdamW's moments and weight decay, and NaN
//                   times zero is NaN. A skipped step leaves no trace in the state: the
//                   optimizer's step count (AdamW's bias correction) lives on the device and
//                   does not count it, and the teacher's mosaic (ages, updated fractions,
//                   computed on the host from the draws) leaves out the skipped steps, which
//                   the record lists. The count of skipped steps is "nonfinite_skipped" in
//                   every train line; it and the skipped steps are kept in the checkpoint for
//                   a resumed run.
// What skip cannot undo: a forward that went non-finite has already moved the student's BN
// running statistics; and BYOL's / MoCo's teacher update comes before the step's forward (it
// reads the previous, finite student), so it stands. Every checkpoint is also scanned on the
// host before it is written (TrainingRun::save): a non-finite tensor there ends the run
// instead of being saved.
#pragma once

#include <cstdint>
#include <string>

#include "engine/checkpoint.h"
#include "engine/nonfinite.h"
#include "engine/teacher.h"

namespace tessera {

enum class OnNonfinite { Stop, Skip };
OnNonfinite parse_on_nonfinite(const std::string& s);  // "stop|skip"; UsageError otherwise

class NonfiniteGuard {
 public:
  // Metadata key of the count of skipped steps in a checkpoint.
  static constexpr const char* kSkippedKey = "run.nonfinite_skipped";
  // Metadata key of the skipped steps themselves ("5,17"; skip mode).
  static constexpr const char* kSkippedStepsKey = "run.nonfinite_skipped_steps";

  // `policy`: the flag's value, stop|skip (UsageError otherwise); the monitor on `device`.
  NonfiniteGuard(const std::string& policy, Device device);

  NonfiniteMonitor& monitor() { return monitor_; }
  bool skipping() const { return policy_ == OnNonfinite::Skip; }
  // The device flag the optimizers etc. read in skip mode; null in stop mode (nothing skips).
  const int32_t* skip_flag() const { return skipping() ? monitor_.skip_flag() : nullptr; }
  // Skip mode: `teacher` reads the skip flag, and its ages and statistics leave out the
  // skipped steps (TeacherSmoother::skip_when). Stop mode: nothing.
  void skip_teacher(TeacherSmoother& teacher);
  // Resumed runs: the skipped steps counted and listed before (kSkippedKey, kSkippedStepsKey;
  // absent: none).
  void restore(const SafetensorsFile& checkpoint);
  // Test hook, after watch_gradients (it needs the names): $TESSERA_INJECT_NONFINITE =
  // "STEP:TENSOR[,STEP:TENSOR...]" (TENSOR "loss" or a gradient's name) puts a NaN there at
  // that step (tests/nonfinite_test.cpp). Unset, it does nothing.
  void arm_test_hook();

  // Reads the record (waits for the device). Stop: throws an Error when a step was not
  // finite; `last_checkpoint` says where the last good state is. Returns the skipped steps
  // of the whole run (resumed runs included).
  int64_t read(const std::string& last_checkpoint);
  // read(), then (skip mode) records the skip count and the skipped steps in the checkpoint's
  // metadata.
  void before_save(SafetensorsWriter& w, const std::string& last_checkpoint);

 private:
  OnNonfinite policy_;
  NonfiniteMonitor monitor_;
  int64_t skipped_before_ = 0;
  bool warned_lost_ = false;
};

}  // namespace tessera
