// The per-step workspace: a bump allocator over one device allocation. Activations, their
// gradients and kernel scratch (im2col columns, cuDNN workspace) come from here; reset() at
// the start of a step frees everything at once, and the next step gets the same addresses,
// which is what lets a whole step be captured as a CUDA graph and replayed.
//
// Growing: the capacity is fixed during a step. If a step asks for more, the request is
// served from a temporary spill allocation (counted in spills()), and the next reset() grows
// the main allocation to the high-water mark and frees the spills. So the first step of a
// run may spill; every later step with the same shapes runs with zero allocations.
#pragma once

#include <cstddef>
#include <vector>

#include "engine/tensor.h"

namespace tessera {

class Workspace {
 public:
  static constexpr size_t kAlignBytes = 256;

  explicit Workspace(Device device, size_t initial_bytes = 0);

  Tensor alloc(Shape shape, DType dtype = DType::F32);
  void* alloc_bytes(size_t bytes);
  void reset();  // start of a step: everything handed out before is invalid
  // Fills the whole main block with 0xFF bytes (NaN as f32), so a kernel that reads memory
  // it never wrote shows up as NaN in tests.
  void poison();

  Device device() const { return device_; }
  size_t capacity() const { return main_.bytes(); }
  size_t used() const { return used_; }              // in this step so far, spills included
  size_t high_water() const { return high_water_; }  // largest step so far
  int spills() const { return spills_this_step_; }   // spill allocations in this step

 private:
  Device device_;
  Buffer main_;
  std::vector<Buffer> spill_;
  size_t offset_ = 0;  // next free byte in main_
  size_t used_ = 0;
  size_t high_water_ = 0;
  int spills_this_step_ = 0;
};

}  // namespace tessera
