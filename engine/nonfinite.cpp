#include "engine/nonfinite.h"

#include <algorithm>
#include <limits>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/distributed.h"

namespace tessera {

namespace {
constexpr int64_t kChunk = 4096;  // elements per chunk, as the optimizer's
}

NonfiniteMonitor::NonfiniteMonitor(Device device)
    : device_(device), record_(device, sizeof(kernels::NonfiniteRecord)) {
  const kernels::NonfiniteRecord init = kernels::nonfinite_record_init();
  copy_from_host(record_.view(Shape{static_cast<int64_t>(sizeof init)}, DType::U8), &init, sizeof init);
}

void NonfiniteMonitor::watch_gradients(const std::string& prefix, const Arena& grads) {
  TS_CHECK(grads.device() == device_, "non-finite check: arena on ", device_name(grads.device()), ", monitor on ",
           device_name(device_));
  const int32_t slots = static_cast<int32_t>(grads.table().size());
  watched_.push_back(Watched{prefix, &grads, DeviceTable<kernels::ArenaChunk>(arena_chunks(grads.table(), kChunk), device_),
                             next_id_});
  next_id_ += slots;
}

NonfiniteMonitor::~NonfiniteMonitor() = default;

void NonfiniteMonitor::poison_at(int64_t step, const std::string& tensor) { poison_.emplace_back(step, tensor); }

void NonfiniteMonitor::poison(const Tensor& t) const {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  copy_from_host(Tensor(t.ptr, Shape{1}, DType::F32, device_), &nan, sizeof nan);
}

void NonfiniteMonitor::check_ops(int64_t first_step) {
  op_step_ = first_step;
  if (!scope_) scope_ = std::make_unique<TapeObserverScope>(static_cast<TapeObserver*>(this));
}

void NonfiniteMonitor::op_done(size_t node, const char* op, const char* layer, bool backward,
                               const std::vector<Tensor>& written) {
  // Ops the model does not name (a relu between layers) are placed after the last one it did.
  if (!backward) {
    std::string name = layer ? layer : "";
    if (name.empty())
      for (auto it = node_layers_.rbegin(); it != node_layers_.rend() && name.empty(); ++it)
        if (!it->empty() && it->rfind("after ", 0) != 0) name = "after '" + *it + "'";
    if (node_layers_.size() <= node) node_layers_.resize(node + 1);
    node_layers_[node] = name;
  }
  const std::string where = node < node_layers_.size() ? node_layers_[node] : std::string(layer ? layer : "");
  const std::string hook = cat(backward ? "backward:" : "forward:", op);
  for (const auto& [at, name] : poison_)
    if (at == op_step_ && name == hook && !written.empty() &&
        std::find(step_poisoned_.begin(), step_poisoned_.end(), hook) == step_poisoned_.end()) {
      poison(written.front());
      step_poisoned_.push_back(hook);
    }
  for (const Tensor& t : written) {
    if (t.device != device_ || t.dtype != DType::F32) continue;
    const int32_t seq = static_cast<int32_t>(step_ops_.size());
    step_ops_.push_back(OpName{op, where, backward, t.shape});
    TS_DISPATCH(device_, nonfinite_check_op, t.f32(), t.numel(), seq, record());
  }
}

void NonfiniteMonitor::check_step(int64_t step, const Tensor& loss) {
  TS_CHECK(loss.dtype == DType::F32 && loss.device == device_, "non-finite check: expected an f32 loss on ",
           device_name(device_), ", found ", loss.str());
  for (const auto& [at, name] : poison_) {
    if (at != step || name.rfind("forward:", 0) == 0 || name.rfind("backward:", 0) == 0) continue;
    Tensor target;
    if (name == "loss") target = loss;
    for (const Watched& w : watched_) {
      const int slot = name.compare(0, w.prefix.size(), w.prefix) == 0 ? w.arena->table().find(name.substr(w.prefix.size())) : -1;
      if (slot >= 0) target = w.arena->slot(static_cast<size_t>(slot));
    }
    TS_CHECK(target.ptr != nullptr, "non-finite test hook: no tensor named '", name, "'");
    poison(target);
  }
  Tensor judged = loss;
  if (ranks_ && ranks_->size() > 1) {
    if (loss_mean_.bytes() < loss.bytes()) loss_mean_ = Buffer(device_, loss.bytes());
    judged = loss_mean_.view(loss.shape, DType::F32);
    copy(judged, loss);
    ranks_->all_reduce_mean(judged.f32(), judged.numel(), device_, "the loss, for the non-finite check");
  }
  TS_DISPATCH(device_, nonfinite_check, judged.f32(), judged.numel(), int32_t{0}, record());
  for (const Watched& w : watched_)
    TS_DISPATCH_COST(device_, nonfinite_check_arena,
                     (kernels::Cost{4.0 * static_cast<double>(w.arena->table().total_numel()), 0.0}), w.chunks.data(),
                     w.chunks.size(), w.arena->data(), w.first_id, record());
  TS_DISPATCH(device_, nonfinite_commit, record(), step);
  if (scope_) {  // the step's op names are those of the step just committed
    last_ops_.swap(step_ops_);
    step_ops_.clear();
    step_poisoned_.clear();
    node_layers_.clear();
    op_step_ = step + 1;
  }
}

const int32_t* NonfiniteMonitor::skip_flag() const { return &record()->skip; }

kernels::NonfiniteRecord NonfiniteMonitor::read() const {
  kernels::NonfiniteRecord r;
  copy_to_host(&r, record_.view(Shape{static_cast<int64_t>(sizeof r)}, DType::U8), sizeof r);
  return r;
}

std::vector<int64_t> NonfiniteMonitor::bad_steps() const {
  const kernels::NonfiniteRecord r = read();
  const int64_t listed = std::max<int64_t>(bad_steps_read_, r.bad_steps - kernels::kNonfiniteRing);
  lost_ += listed - bad_steps_read_;
  for (int64_t b = listed; b < r.bad_steps; ++b) bad_steps_.push_back(r.bad_step_ring[b % kernels::kNonfiniteRing]);
  bad_steps_read_ = r.bad_steps;
  return bad_steps_;
}

void NonfiniteMonitor::restore_bad_steps(std::vector<int64_t> steps) {
  TS_CHECK(bad_steps_.empty() && bad_steps_read_ == 0, "restore_bad_steps: the monitor has counted steps already");
  std::sort(steps.begin(), steps.end());
  bad_steps_ = std::move(steps);
}

std::string NonfiniteMonitor::describe_op(int32_t op) const {
  if (op < 0 || op >= static_cast<int32_t>(last_ops_.size())) return cat("op ", op);
  const OpName& o = last_ops_[static_cast<size_t>(op)];
  const std::string where = o.layer.empty()                  ? std::string()
                            : o.layer.rfind("after ", 0) == 0 ? cat(" ", o.layer)
                                                              : cat(" in '", o.layer, "'");
  return cat(o.backward ? "the backward of " : "", o.op, where, o.backward ? ", gradient " : ", output ", o.shape.str());
}

std::string NonfiniteMonitor::describe(int32_t tensor) const {
  if (tensor == 0) return "the loss";
  for (const Watched& w : watched_) {
    const int32_t slot = tensor - w.first_id;
    if (slot >= 0 && slot < static_cast<int32_t>(w.arena->table().size()))
      return cat("the gradient of '", w.prefix, w.arena->table()[static_cast<size_t>(slot)].name, "'");
  }
  return cat("tensor ", tensor);
}

}  // namespace tessera
