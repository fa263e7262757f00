// Fused optimizers over a parameter arena: SGD (momentum, Nesterov, weight decay, as
// torch.optim.SGD), LARS (as solo-learn's, the BYOL recipe) and AdamW (as torch.optim.AdamW).
// One kernel launch per step over the whole arena (two for LARS: per-tensor norms, then the
// update). State arenas (momentum; AdamW's two moments) share the parameter table, so element
// i of every arena is the same parameter.
//
// Exclusions: with exclude_bias_and_norm (the default), tensors that are not conv or linear
// weights (biases, BN gamma and beta, read from the ParamTable kinds) get no weight decay and,
// for LARS, no trust-ratio adaptation, as in BYOL / solo-learn and the FixMatch ports.
// The learning rate is passed to every step (engine/schedule.h computes it), so the schedule
// stays outside the optimizer and a resumed run only needs the step count.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/arena.h"
#include "engine/slot_tables.h"
#include "kernels/common/optimizer_rules.h"

namespace tessera {

enum class OptimizerKind { Sgd, Lars, AdamW };
OptimizerKind parse_optimizer(const std::string& s);  // "sgd|lars|adamw"; UsageError otherwise
const char* optimizer_name(OptimizerKind k);

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::Sgd;
  float momentum = 0.9f;             // SGD, LARS
  bool nesterov = false;             // SGD, LARS
  float weight_decay = 0.0f;
  bool exclude_bias_and_norm = true;
  float eta = 0.02f;                 // LARS trust coefficient (solo-learn's BYOL CIFAR value)
  float lars_eps = 1e-8f;
  bool lars_clip_lr = false;         // LARS: trust = min(trust / lr, 1) (solo-learn's clip_lr)
  float beta1 = 0.9f, beta2 = 0.999f, adam_eps = 1e-8f;  // AdamW
};

class Optimizer {
 public:
  Optimizer(const ParamTable& table, Device device, OptimizerConfig config);

  // One step with learning rate lr: params -= lr * (direction from grads and state).
  void step(Arena& params, const Arena& grads, float lr);
  // From now on every step reads *flag on the device and leaves weights and state as they are
  // when it is non-zero (--on-nonfinite skip: kernels/nonfinite.h), the step count included:
  // it lives on the device and counts only the steps taken, so AdamW's bias correction after
  // a skipped step is the one of a run that never had it. Null: never skip.
  void skip_when(const int32_t* flag) { skip_ = flag; }

  const OptimizerConfig& config() const { return config_; }
  bool excluded(size_t slot) const;  // from weight decay and adaptation
  // Steps taken (AdamW's bias-correction t), skipped ones left out. Reads the device counter:
  // waits for the device (checkpoints and tests only).
  int64_t steps() const;

  // For checkpoints: the state arenas by name ("momentum_buffer"; "exp_avg", "exp_avg_sq",
  // PyTorch's names), and the step count as strings under "optim." (engine/checkpoint.h's prefix).
  std::vector<std::pair<std::string, Arena*>> state_arenas();
  std::map<std::string, std::string> state_strings() const;
  void restore_state_strings(const std::map<std::string, std::string>& kv);  // Error naming a bad key

 private:
  void set_steps(int64_t n);  // the device counter

  const ParamTable& table_;
  Device device_;
  OptimizerConfig config_;
  Buffer steps_;  // one int64 on the device: steps taken (optimizer_count_step)
  const int32_t* skip_ = nullptr;  // device flag, see skip_when()
  DeviceTable<kernels::OptimizerSlot> slots_;
  DeviceTable<kernels::ArenaChunk> chunks_;
  std::vector<std::unique_ptr<Arena>> state_;  // momentum, or exp_avg and exp_avg_sq
  Buffer lars_partials_;                       // (chunks, 2) partials then (slots, 2) trust, allocated once
};

class SafetensorsWriter;
class SafetensorsFile;
// One optimizer of several in a checkpoint (byol, moco): its state arenas under
// prefix + arena name + "." + slot name, its strings as metadata under prefix + key.
void add_optimizer_state(SafetensorsWriter& w, Optimizer& opt, const std::string& prefix);
void load_optimizer_state(const SafetensorsFile& f, Optimizer& opt, const std::string& prefix);

}  // namespace tessera
