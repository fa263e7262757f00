#include "engine/workspace.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "engine/check.h"

namespace tessera {

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

Workspace::Workspace(Device device, size_t initial_bytes)
    : device_(device), main_(device, round_up(initial_bytes, kAlignBytes)) {}

void* Workspace::alloc_bytes(size_t bytes) {
  bytes = round_up(std::max<size_t>(bytes, 1), kAlignBytes);
  used_ += bytes;
  high_water_ = std::max(high_water_, used_);
  if (offset_ + bytes <= main_.bytes()) {
    void* p = static_cast<char*>(main_.data()) + offset_;
    offset_ += bytes;
    return p;
  }
  // Over capacity: serve this step from a spill block; reset() will grow the main block.
  spill_.emplace_back(device_, bytes);
  ++spills_this_step_;
  return spill_.back().data();
}

void* Workspace::scratch(size_t bytes) {
  bytes = round_up(std::max<size_t>(bytes, 1), kAlignBytes);
  scratch_high_water_ = std::max(scratch_high_water_, bytes);
  if (bytes <= scratch_.bytes()) return scratch_.data();
  // Larger than the region: a spill for this step; reset() grows the region.
  spill_.emplace_back(device_, bytes);
  ++spills_this_step_;
  return spill_.back().data();
}

Tensor Workspace::alloc(Shape shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return Tensor(alloc_bytes(bytes), shape, dtype, device_);
}

void Workspace::reset() {
  // Between steps: free the spills and regrow what was too small (the bump block with headroom).
  spill_.clear();
  if (high_water_ > main_.bytes()) {
    main_ = Buffer();  // free before allocating the larger block
    main_ = Buffer(device_, round_up(high_water_ + high_water_ / 8, kAlignBytes));
  }
  if (scratch_high_water_ > scratch_.bytes()) {
    scratch_ = Buffer();
    scratch_ = Buffer(device_, scratch_high_water_);
  }
  offset_ = 0;
  used_ = 0;
  spills_this_step_ = 0;
}

void Workspace::poison() {
  uint32_t nan_bits = 0xFFFFFFFFu;
  float nan;
  std::memcpy(&nan, &nan_bits, sizeof nan);
  for (Buffer* b : {&main_, &scratch_})
    if (b->bytes() > 0) fill_value(b->view(Shape{static_cast<int64_t>(b->bytes() / 4)}, DType::F32), nan);
}

}  // namespace tessera
