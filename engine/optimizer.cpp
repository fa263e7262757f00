#include "engine/optimizer.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/dispatch.h"
#include "kernels/optimizer.h"

namespace tessera {

namespace {

constexpr int64_t kChunk = 4096;
static_assert(kChunk == kernels::cpu::kOptimizerChunk, "one chunk size for both backends");

const char* const kNames[] = {"sgd", "lars", "adamw"};

}  // namespace

OptimizerKind parse_optimizer(const std::string& s) {
  for (int i = 0; i < 3; ++i)
    if (s == kNames[i]) return static_cast<OptimizerKind>(i);
  throw UsageError(cat("--optimizer: expected sgd|lars|adamw, found '", s, "'"));
}

const char* optimizer_name(OptimizerKind k) { return kNames[static_cast<int>(k)]; }

Optimizer::Optimizer(const ParamTable& table, Device device, OptimizerConfig config)
    : table_(table), device_(device), config_(config) {
  const OptimizerConfig& c = config_;
  if (!(c.momentum >= 0.0f && c.momentum < 1.0f))
    throw UsageError(cat("--momentum: expected a value in [0, 1), found ", c.momentum));
  if (c.nesterov && c.momentum == 0.0f) throw UsageError("--nesterov: needs a momentum > 0");
  if (!(c.weight_decay >= 0.0f)) throw UsageError(cat("--weight-decay: expected >= 0, found ", c.weight_decay));
  if (c.kind == OptimizerKind::Lars && !(c.eta > 0.0f))
    throw UsageError(cat("--lars-eta: expected > 0, found ", c.eta));
  if (c.kind == OptimizerKind::AdamW && !(c.beta1 >= 0.0f && c.beta1 < 1.0f && c.beta2 >= 0.0f && c.beta2 < 1.0f))
    throw UsageError(cat("--betas: expected values in [0, 1), found ", c.beta1, ", ", c.beta2));

  const std::vector<kernels::ArenaChunk> chunks = arena_chunks(table, kChunk);
  std::vector<kernels::OptimizerSlot> slots;
  for (size_t i = 0; i < table.size(); ++i) {
    kernels::OptimizerSlot s;
    s.offset = table[i].offset;
    s.numel = table[i].numel;
    s.weight_decay = excluded(i) ? 0.0f : c.weight_decay;
    s.adapt = excluded(i) ? 0 : 1;
    s.first_chunk = -1;
    s.num_chunks = 0;
    slots.push_back(s);
  }
  for (size_t k = 0; k < chunks.size(); ++k) {
    kernels::OptimizerSlot& s = slots[static_cast<size_t>(chunks[k].slot)];
    if (s.first_chunk < 0) s.first_chunk = static_cast<int32_t>(k);
    ++s.num_chunks;
  }
  steps_ = Buffer(device, sizeof(int64_t));
  set_steps(0);
  slots_ = DeviceTable<kernels::OptimizerSlot>(std::move(slots), device);
  chunks_ = DeviceTable<kernels::ArenaChunk>(chunks, device);
  const int arenas = c.kind == OptimizerKind::AdamW ? 2 : 1;
  for (int i = 0; i < arenas; ++i) state_.push_back(std::make_unique<Arena>(table, device));  // zeroed
  // LARS: (chunks, 2) partial norms, then (slots, 2) trust ratios and applied weight decays.
  if (c.kind == OptimizerKind::Lars)
    lars_partials_ = Buffer(device, static_cast<size_t>(2 * chunks_.size() + 2 * slots_.size()) * sizeof(float));
}

bool Optimizer::excluded(size_t slot) const {
  return config_.exclude_bias_and_norm && !is_weight_matrix(table_[slot].kind);
}

void Optimizer::step(Arena& params, const Arena& grads, float lr) {
  TS_CHECK(params.table().same_layout(table_) && grads.table().same_layout(table_),
           "optimizer step: parameter and gradient arenas must have the optimizer's table");
  TS_CHECK(params.device() == device_ && grads.device() == device_, "optimizer step: arenas on ",
           device_name(params.device()), " and ", device_name(grads.device()), ", optimizer built for ",
           device_name(device_));
  TS_CHECK(std::isfinite(lr) && lr >= 0.0f, "optimizer step: learning rate must be finite and >= 0, found ", lr);
  int64_t* steps = static_cast<int64_t*>(steps_.data());
  TS_DISPATCH_COST(device_, optimizer_count_step, (kernels::Cost{16.0, 1.0}), steps, skip_);
  if (chunks_.size() == 0) return;
  const OptimizerConfig& c = config_;
  const kernels::OptimizerSlot* slots = slots_.data();
  const kernels::ArenaChunk* chunks = chunks_.data();
  const int64_t n = chunks_.size();
  // Per parameter, for the profiler: kernels/optimizer.h's counts.
  const auto cost = [this](double bytes, double flops) {
    const double params = static_cast<double>(table_.total_numel());
    return kernels::Cost{bytes * params, flops * params};
  };
  switch (c.kind) {
    case OptimizerKind::Sgd:
      TS_DISPATCH_COST(device_, sgd_step, cost(20, 6), slots, chunks, n, params.data(), grads.data(), state_[0]->data(),
                  kernels::SgdParams{lr, c.momentum, c.nesterov ? 1 : 0, skip_});
      break;
    case OptimizerKind::Lars: {
      float* partials = static_cast<float*>(lars_partials_.data());
      float* trust = partials + 2 * n;
      const int64_t num_slots = slots_.size();
      const kernels::LarsParams lars{lr, c.momentum, c.eta, c.lars_eps, c.nesterov ? 1 : 0, skip_, c.lars_clip_lr ? 1 : 0};
      TS_DISPATCH_COST(device_, lars_norms, cost(8, 4), slots, chunks, n, params.data(), grads.data(), partials);
      TS_DISPATCH_COST(device_, lars_trust_ratios, (kernels::Cost{8.0 * double(n + num_slots), 2.0 * double(n)}), slots,
                       num_slots, partials, trust, lars);
      TS_DISPATCH_COST(device_, lars_step, cost(20, 6), slots, chunks, n, params.data(), grads.data(), state_[0]->data(),
                       trust, lars);
      break;
    }
    case OptimizerKind::AdamW: {
      // The bias corrections of the device's step count (kernels/optimizer.h).
      const kernels::AdamWParams p{lr, c.beta1, c.beta2, c.adam_eps, steps, skip_};
      TS_DISPATCH_COST(device_, adamw_step, cost(28, 12), slots, chunks, n, params.data(), grads.data(), state_[0]->data(),
                  state_[1]->data(), p);
      break;
    }
  }
}

std::vector<std::pair<std::string, Arena*>> Optimizer::state_arenas() {
  if (config_.kind == OptimizerKind::AdamW) return {{"exp_avg", state_[0].get()}, {"exp_avg_sq", state_[1].get()}};
  return {{"momentum_buffer", state_[0].get()}};
}

int64_t Optimizer::steps() const {
  int64_t n = 0;
  copy_to_host(&n, steps_.view(Shape{static_cast<int64_t>(sizeof n)}, DType::U8), sizeof n);
  return n;
}

void Optimizer::set_steps(int64_t n) {
  copy_from_host(steps_.view(Shape{static_cast<int64_t>(sizeof n)}, DType::U8), &n, sizeof n);
}

std::map<std::string, std::string> Optimizer::state_strings() const {
  return {{"optim.kind", optimizer_name(config_.kind)}, {"optim.steps", std::to_string(steps())}};
}

void Optimizer::restore_state_strings(const std::map<std::string, std::string>& kv) {
  auto get = [&](const char* key) -> const std::string& {
    auto it = kv.find(key);
    if (it == kv.end()) throw Error(cat("optimizer state: key '", key, "' missing"));
    return it->second;
  };
  if (get("optim.kind") != optimizer_name(config_.kind))
    throw Error(cat("resume: checkpoint has optimizer ", get("optim.kind"), ", this run has ",
                    optimizer_name(config_.kind)));
  const std::string& v = get("optim.steps");
  char* end = nullptr;
  errno = 0;
  const long long steps = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || steps < 0)
    throw Error(cat("optimizer state: key 'optim.steps' expected a count, found '", v, "'"));
  set_steps(steps);
}

void add_optimizer_state(SafetensorsWriter& w, Optimizer& opt, const std::string& prefix) {
  for (const auto& [name, arena] : opt.state_arenas()) add_arena(w, *arena, prefix + name + ".");
  for (const auto& kv : opt.state_strings()) w.add_metadata(prefix + kv.first, kv.second);
}

void load_optimizer_state(const SafetensorsFile& f, Optimizer& opt, const std::string& prefix) {
  for (const auto& [name, arena] : opt.state_arenas()) load_arenas(f, {arena}, prefix + name + ".");
  opt.restore_state_strings(f.metadata_under(prefix));
}

}  // namespace tessera
