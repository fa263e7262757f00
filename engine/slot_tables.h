// Small per-slot tables that arena-wide kernels read (the teacher's fragment table, the
// optimizers' per-tensor settings, the chunk list). Built once on the host from a ParamTable,
// uploaded once to the device that runs the kernels, never per step.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/arena.h"
#include "engine/tensor.h"
#include "kernels/common/arena_chunk.h"

namespace tessera {

// A host table and its copy on `device` (the same memory when device is the CPU).
template <typename T>
class DeviceTable {
 public:
  DeviceTable() = default;
  DeviceTable(std::vector<T> rows, Device device) : host_(std::move(rows)) {
    if (device == Device::CPU || host_.empty()) return;
    device_ = Buffer(device, host_.size() * sizeof(T));
    copy_from_host(device_.view(Shape{static_cast<int64_t>(device_.bytes())}, DType::U8), host_.data(),
                   device_.bytes());
  }
  const std::vector<T>& host() const { return host_; }
  // The pointer the kernels of the table's device take.
  const T* data() const { return device_.data() ? static_cast<const T*>(device_.data()) : host_.data(); }
  int64_t size() const { return static_cast<int64_t>(host_.size()); }

 private:
  std::vector<T> host_;
  Buffer device_;
};

// The table's slots cut into chunks of at most `chunk_numel` elements (a multiple of 4), in
// arena order; gaps are not covered.
std::vector<kernels::ArenaChunk> arena_chunks(const ParamTable& table, int64_t chunk_numel);

}  // namespace tessera
