#include "engine/workspace.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>

#include "engine/check.h"

namespace tessera {

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

Workspace::Workspace(Device device, size_t initial_bytes)
    : device_(device), main_(device, round_up(initial_bytes, kAlignBytes)) {}

size_t Workspace::place(size_t bytes) {
  auto best = free_.end();
  for (auto it = free_.begin(); it != free_.end(); ++it)
    if (it->second >= bytes && (best == free_.end() || it->second < best->second)) best = it;
  if (best == free_.end()) {  // nothing free fits: from the top
    const size_t at = top_;
    top_ += bytes;
    return at;
  }
  const size_t at = best->first, left = best->second - bytes;
  free_.erase(best);
  if (left > 0) free_.emplace(at + bytes, left);
  return at;
}

void* Workspace::alloc_bytes(size_t bytes) {
  bytes = round_up(std::max<size_t>(bytes, 1), kAlignBytes);
  const size_t at = place(bytes);
  used_ += bytes;
  high_water_ = std::max(high_water_, top_);
  void* p;
  bool spilled = false;
  if (at + bytes <= main_.bytes()) {
    p = static_cast<char*>(main_.data()) + at;
  } else {
    // Past the capacity: serve this block from a spill; reset() will grow the main block.
    Buffer b(device_, bytes);
    p = b.data();
    spilled_.emplace(p, std::move(b));
    spilled = true;
    ++spills_this_step_;
  }
  live_.emplace(p, Block{at, bytes, spilled});
  return p;
}

void Workspace::release(void* p) {
  auto it = live_.find(p);
  TS_CHECK(it != live_.end(), "workspace release: expected a live block of this step, found ", p,
           " (released twice, a view into a block, or memory from elsewhere)");
  const Block b = it->second;
  live_.erase(it);
  if (b.spilled) spilled_.erase(p);
  used_ -= b.bytes;
  // Back into the free ranges, merged with its neighbours; a range that reaches the top lowers it.
  size_t at = b.offset, bytes = b.bytes;
  auto next = free_.lower_bound(at);
  if (next != free_.end() && next->first == at + bytes) {
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == at) {
      at = prev->first;
      bytes += prev->second;
      free_.erase(prev);
    }
  }
  if (at + bytes == top_) top_ = at;
  else free_.emplace(at, bytes);
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
  spilled_.clear();
  live_.clear();
  free_.clear();
  if (high_water_ > main_.bytes()) {
    main_ = Buffer();  // free before allocating the larger block
    main_ = Buffer(device_, round_up(high_water_ + high_water_ / 8, kAlignBytes));
  }
  if (scratch_high_water_ > scratch_.bytes()) {
    scratch_ = Buffer();
    scratch_ = Buffer(device_, scratch_high_water_);
  }
  top_ = 0;
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
