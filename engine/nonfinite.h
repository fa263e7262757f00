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
//
// Which op went non-finite first (check_ops, --nonfinite-check ops): the monitor becomes the
// thread's TapeObserver (engine/autograd.h) and checks, as the tape runs, every recorded op's
// outputs after its forward and the gradients each backward node wrote, one launch per tensor
// under a sequence number in execution order; the lowest number found in a bad step is kept in
// the record, and the host keeps the (op, direction, layer, shape) of every number of the last
// step checked to name it. A training step's tape is the same every step, so the names of the
// last step checked are those of the bad one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/autograd.h"
#include "engine/slot_tables.h"
#include "engine/tensor.h"
#include "kernels/nonfinite.h"

namespace tessera {

namespace dist {
class Communicator;
}

class NonfiniteMonitor : private TapeObserver {
 public:
  explicit NonfiniteMonitor(Device device);
  ~NonfiniteMonitor() override;

  // Checks `grads` at every check_step from now on; its slots are named prefix + slot name.
  // The arena must outlive the monitor.
  void watch_gradients(const std::string& prefix, const Arena& grads);
  // After backward, before any update of step `step`: checks the loss (any f32 tensor on the
  // monitor's device) and every watched arena, then commits the step (sets or clears skip).
  // Three to five kernel launches; nothing waits.
  void check_step(int64_t step, const Tensor& loss);
  // Data parallel (more than one rank): check_step judges the mean of the ranks' losses (one
  // small all-reduce per step), not this rank's own. The gradients are all-reduced already, so
  // every rank then takes the same decision: a loss that is non-finite on one rank only skips
  // or stops them all, instead of one replica skipping a step the others take.
  void judge_across(dist::Communicator* ranks) { ranks_ = ranks; }

  // From now on (until the monitor is destroyed) check every op of this thread's graphs as
  // above; the steps are numbered from `first_step` (the run's start step). Costs one check
  // launch per op output and per backward node's gradient: a diagnostic mode.
  void check_ops(int64_t first_step);
  bool checking_ops() const { return scope_ != nullptr; }

  // Test hook: at `step`, before the checks, element 0 of the named tensor ("loss" or a
  // watched gradient's name) is set to NaN (a host-to-device copy: for tests only). With
  // check_ops, "forward:OP" / "backward:OP" poison the first tensor the step's first op named
  // OP wrote in that direction, before it is checked.
  void poison_at(int64_t step, const std::string& tensor);

  const int32_t* skip_flag() const;      // on the device: NonfiniteRecord::skip
  kernels::NonfiniteRecord read() const;  // the record on the host (waits for the device)
  // The steps that had a non-finite value, ascending, the ones restore_bad_steps() gave
  // first: reads the record (waits for the device). bad_steps_lost(): how many went bad
  // between two reads beyond the record's ring (kernels::kNonfiniteRing), so are not listed.
  std::vector<int64_t> bad_steps() const;
  int64_t bad_steps_lost() const { return lost_; }
  void restore_bad_steps(std::vector<int64_t> steps);  // a resumed run: those of the run before
  // "the loss" or "the gradient of 'layer1.0.conv1.weight'".
  std::string describe(int32_t tensor) const;
  // "forward relu in layer 'layer1.0', output (8, 16, 4, 4)": op number `op` of the last step
  // checked (NonfiniteRecord::first_op).
  std::string describe_op(int32_t op) const;
  Device device() const { return device_; }

 private:
  struct Watched {
    std::string prefix;
    const Arena* arena;
    DeviceTable<kernels::ArenaChunk> chunks;
    int32_t first_id;
  };
  struct OpName {
    std::string op, layer;  // layer: the op's, or "after 'L'" with L the last layer named before it
    bool backward;
    Shape shape;
  };
  kernels::NonfiniteRecord* record() const { return static_cast<kernels::NonfiniteRecord*>(record_.data()); }
  void op_done(size_t node, const char* op, const char* layer, bool backward,
               const std::vector<Tensor>& written) override;
  void poison(const Tensor& t) const;  // element 0 = NaN

  Device device_;
  Buffer record_;
  dist::Communicator* ranks_ = nullptr;  // judge_across
  Buffer loss_mean_;                     // judge_across: the ranks' mean loss
  std::vector<Watched> watched_;
  int32_t next_id_ = 1;  // 0: the loss
  std::vector<std::pair<int64_t, std::string>> poison_;
  // Steps with a non-finite value, as far as the host has read them (bad_steps()).
  mutable std::vector<int64_t> bad_steps_;
  mutable int64_t bad_steps_read_ = 0;  // NonfiniteRecord::bad_steps at the last read
  mutable int64_t lost_ = 0;
  // check_ops: the step the tape is running, its ops so far, and the last checked step's.
  std::unique_ptr<TapeObserverScope> scope_;
  int64_t op_step_ = 0;
  std::vector<OpName> step_ops_, last_ops_;
  std::vector<std::string> node_layers_;  // per tape node of the step: its layer as OpName says
  std::vector<std::string> step_poisoned_;  // "forward:OP" hooks already used this step
};

}  // namespace tessera
