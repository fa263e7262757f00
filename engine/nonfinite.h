// NonfiniteMonitor: is anything in a training step NaN or infinite, and what was it first?
// Checked on the device after every backward, with no host synchronisation: the loss and
// every watched gradient arena go through kernels/nonfinite.h's check, which leaves its
// answer in a small record in device memory. The host reads the record (a sync) only when it
// writes a log line or a checkpoint (apps/run/nonfinite.h decides what to do then).
//
// The record's `skip` flag says whether the last checked step had a non-finite value; an
// Optimizer / TeacherSmoother given skip_flag() (skip_when) and ops::queue_enqueue read it on
// the device and leave their state as it was for that step.
//
// Names: id 0 is the loss, then one id per slot of each watched arena in registration order,
// named prefix + slot name (PyTorch's names, as in checkpoints).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/slot_tables.h"
#include "engine/tensor.h"
#include "kernels/nonfinite.h"

namespace tessera {

class NonfiniteMonitor {
 public:
  explicit NonfiniteMonitor(Device device);

  // Checks `grads` at every check_step from now on; its slots are named prefix + slot name.
  // The arena must outlive the monitor.
  void watch_gradients(const std::string& prefix, const Arena& grads);
  // After backward, before any update of step `step`: checks the loss (any f32 tensor on the
  // monitor's device) and every watched arena, then commits the step (sets or clears skip).
  // Three to five kernel launches; nothing waits.
  void check_step(int64_t step, const Tensor& loss);

  // Test hook: at `step`, before the checks, element 0 of the named tensor ("loss" or a
  // watched gradient's name) is set to NaN (a host-to-device copy: for tests only).
  void poison_at(int64_t step, const std::string& tensor);

  const int32_t* skip_flag() const;      // on the device: NonfiniteRecord::skip
  kernels::NonfiniteRecord read() const;  // the record on the host (waits for the device)
  // "the loss" or "the gradient of 'layer1.0.conv1.weight'".
  std::string describe(int32_t tensor) const;
  Device device() const { return device_; }

 private:
  struct Watched {
    std::string prefix;
    const Arena* arena;
    DeviceTable<kernels::ArenaChunk> chunks;
    int32_t first_id;
  };
  kernels::NonfiniteRecord* record() const { return static_cast<kernels::NonfiniteRecord*>(record_.data()); }

  Device device_;
  Buffer record_;
  std::vector<Watched> watched_;
  int32_t next_id_ = 1;  // 0: the loss
  std::vector<std::pair<int64_t, std::string>> poison_;
};

}  // namespace tessera
