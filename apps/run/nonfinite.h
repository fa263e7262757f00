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
//                   state from before the step.
//   skip            the step's updates are dropped on the device: the optimizers (and the
//                   FixMatch teacher, which follows the optimizer) read the record's skip flag
//                   and leave weights and state as they were; MoCo does not enqueue the step's
//                   keys. Why a flag the kernels read rather than a zero learning rate: a zero
//                   lr still moves momentum buffers, AdamW's moments and weight decay, and NaN
//                   times zero is NaN. The count of skipped steps is "nonfinite_skipped" in
//                   every train line and is kept in the checkpoint for a resumed run.
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

namespace tessera {

enum class OnNonfinite { Stop, Skip };
OnNonfinite parse_on_nonfinite(const std::string& s);  // "stop|skip"; UsageError otherwise

class NonfiniteGuard {
 public:
  // Metadata key of the count of skipped steps in a checkpoint.
  static constexpr const char* kSkippedKey = "run.nonfinite_skipped";

  // `policy`: the flag's value, stop|skip (UsageError otherwise); the monitor on `device`.
  NonfiniteGuard(const std::string& policy, Device device);

  NonfiniteMonitor& monitor() { return monitor_; }
  bool skipping() const { return policy_ == OnNonfinite::Skip; }
  // The device flag the optimizers etc. read in skip mode; null in stop mode (nothing skips).
  const int32_t* skip_flag() const { return skipping() ? monitor_.skip_flag() : nullptr; }
  // Resumed runs: the skipped steps counted before (kSkippedKey; absent: 0).
  void restore(const SafetensorsFile& checkpoint);
  // Test hook, after watch_gradients (it needs the names): $TESSERA_INJECT_NONFINITE =
  // "STEP:TENSOR[,STEP:TENSOR...]" (TENSOR "loss" or a gradient's name) puts a NaN there at
  // that step (tests/nonfinite_test.cpp). Unset, it does nothing.
  void arm_test_hook();

  // Reads the record (waits for the device). Stop: throws an Error when a step was not
  // finite; `last_checkpoint` says where the last good state is. Returns the skipped steps
  // of the whole run (resumed runs included).
  int64_t read(const std::string& last_checkpoint);
  // read(), then (skip mode) records the skip count in the checkpoint's metadata.
  void before_save(SafetensorsWriter& w, const std::string& last_checkpoint);

 private:
  OnNonfinite policy_;
  NonfiniteMonitor monitor_;
  int64_t skipped_before_ = 0;
};

}  // namespace tessera
