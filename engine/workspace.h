// The per-step workspace: a bump allocator over one device allocation. Activations, their
// gradients and what a backward needs from its forward come from here; reset() at the start
// of a step frees everything at once, and the next step gets the same addresses, which is what
// lets a whole step be captured as a CUDA graph and replayed.
//
// Scratch is separate. What is dead when its op returns (im2col columns, the cuDNN or oneDNN
// workspace of a convolution) comes from scratch(): one region per workspace, sized to the
// largest request seen and handed to every op in turn. A workspace belongs to one stream, and
// ops on a stream run in order, so the next op's kernels cannot start before the previous
// op's have finished with the region. Held in the bump allocator instead, every convolution's
// scratch would live until the step ends: 1.2 GiB for a ResNet-18 CIFAR step at batch 64 on
// the CPU (bench/RESULTS.md), tens of GB for a ResNet-50 step under cuDNN.
//
// Growing: capacities are fixed during a step. A request that does not fit (in the bump
// block or the scratch region) is served from a temporary spill allocation (counted in
// spills()), and the next reset() grows the block or the region to the step's high-water mark
// and frees the spills. So the first step of a run may spill; every later step with the same
// shapes runs with zero allocations.
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
  // At least `bytes` of scratch, valid until the next scratch() or reset() call: for memory an
  // op uses only while it runs. Every call may return the same address.
  void* scratch(size_t bytes);
  void reset();  // start of a step: everything handed out before is invalid
  // Fills the main block and the scratch region with 0xFF bytes (NaN as f32), so a kernel
  // that reads memory it never wrote shows up as NaN in tests.
  void poison();

  Device device() const { return device_; }
  size_t capacity() const { return main_.bytes(); }
  size_t used() const { return used_; }              // in this step so far, spills included
  size_t high_water() const { return high_water_; }  // largest step so far (bump allocations)
  size_t scratch_capacity() const { return scratch_.bytes(); }
  size_t scratch_high_water() const { return scratch_high_water_; }  // largest scratch request
  // Device memory the workspace needs at its peak: the step's allocations plus the scratch.
  size_t peak_bytes() const { return high_water_ + scratch_high_water_; }
  int spills() const { return spills_this_step_; }   // spill allocations in this step

 private:
  Device device_;
  Buffer main_;
  Buffer scratch_;
  std::vector<Buffer> spill_;
  size_t offset_ = 0;  // next free byte in main_
  size_t used_ = 0;
  size_t high_water_ = 0;
  size_t scratch_high_water_ = 0;
  int spills_this_step_ = 0;
};

}  // namespace tessera
