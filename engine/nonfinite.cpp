#include "engine/nonfinite.h"

#include <limits>

#include "engine/check.h"
#include "engine/dispatch.h"

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

void NonfiniteMonitor::poison_at(int64_t step, const std::string& tensor) { poison_.emplace_back(step, tensor); }

void NonfiniteMonitor::check_step(int64_t step, const Tensor& loss) {
  TS_CHECK(loss.dtype == DType::F32 && loss.device == device_, "non-finite check: expected an f32 loss on ",
           device_name(device_), ", found ", loss.str());
  for (const auto& [at, name] : poison_) {
    if (at != step) continue;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    Tensor target;
    if (name == "loss") target = loss;
    for (const Watched& w : watched_) {
      const int slot = name.compare(0, w.prefix.size(), w.prefix) == 0 ? w.arena->table().find(name.substr(w.prefix.size())) : -1;
      if (slot >= 0) target = w.arena->slot(static_cast<size_t>(slot));
    }
    TS_CHECK(target.ptr != nullptr, "non-finite test hook: no tensor named '", name, "'");
    copy_from_host(Tensor(target.ptr, Shape{1}, DType::F32, device_), &nan, sizeof nan);
  }
  TS_DISPATCH(device_, nonfinite_check, loss.f32(), loss.numel(), int32_t{0}, record());
  for (const Watched& w : watched_)
    TS_DISPATCH_COST(device_, nonfinite_check_arena,
                     (kernels::Cost{4.0 * static_cast<double>(w.arena->table().total_numel()), 0.0}), w.chunks.data(),
                     w.chunks.size(), w.arena->data(), w.first_id, record());
  TS_DISPATCH(device_, nonfinite_commit, record(), step);
}

const int32_t* NonfiniteMonitor::skip_flag() const { return &record()->skip; }

kernels::NonfiniteRecord NonfiniteMonitor::read() const {
  kernels::NonfiniteRecord r;
  copy_to_host(&r, record_.view(Shape{static_cast<int64_t>(sizeof r)}, DType::U8), sizeof r);
  return r;
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
