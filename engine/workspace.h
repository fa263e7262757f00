// The per-step workspace: one device allocation carved into blocks. Activations, their
// gradients and what a backward needs from its forward come from here; reset() at the start
// of a step frees everything at once, and the next step gets the same addresses (the same
// requests in the same order get the same blocks), which is what lets a whole step be captured
// as a CUDA graph and replayed.
//
// Blocks can also be handed back during the step (release): the backward releases each
// activation and activation gradient once the last closure that reads it has run
// (engine/autograd.h), and later requests reuse the space. Allocation is best fit over the
// free ranges below the top of the block (the smallest range that holds the request, lowest
// address on a tie), else from the top; a released range merges with free neighbours, and one
// that reaches the top lowers it. A step makes a few hundred requests, so the free list is a
// sorted map scanned linearly: microseconds per step. On CUDA, reuse is ordered by the stream
// like the scratch below: a kernel that writes a reused block is queued after every kernel that
// read it before it was released.
//
// Scratch is separate. What is dead when its op returns (im2col columns, the cuDNN or oneDNN
// workspace of a convolution) comes from scratch(): one region per workspace, sized to the
// largest request seen and handed to every op in turn. A workspace belongs to one stream, and
// ops on a stream run in order, so the next op's kernels cannot start before the previous
// op's have finished with the region. Held in the bump allocator instead, every convolution's
// scratch would live until the step ends: 1.2 GiB for a ResNet-18 CIFAR step at batch 64 on
// the CPU (bench/RESULTS.md), tens of GB for a ResNet-50 step under cuDNN.
//
// Growing: capacities are fixed during a step. Offsets are planned as if the block were
// unbounded; a request whose range ends past the capacity (or that does not fit the scratch
// region) is served from a temporary spill allocation (counted in spills()), and the next
// reset() grows the block to the step's high-water mark (the highest offset planned) and frees
// the spills. So the first step of a run may spill; every later step with the same requests
// runs with zero allocations.
#pragma once

#include <cstddef>
#include <map>
#include <unordered_map>
#include <vector>

#include "engine/tensor.h"

namespace tessera {

class Workspace {
 public:
  static constexpr size_t kAlignBytes = 256;

  explicit Workspace(Device device, size_t initial_bytes = 0);

  Tensor alloc(Shape shape, DType dtype = DType::F32);
  void* alloc_bytes(size_t bytes);
  // Hands a block from alloc back for reuse in this step; the memory is invalid from here on.
  // A pointer that is not a live block of this step is an Error (double release, a view).
  void release(void* p);
  void release(const Tensor& t) { release(t.ptr); }
  // At least `bytes` of scratch, valid until the next scratch() or reset() call: for memory an
  // op uses only while it runs. Every call may return the same address.
  void* scratch(size_t bytes);
  void reset();  // start of a step: everything handed out before is invalid
  // Fills the main block and the scratch region with 0xFF bytes (NaN as f32), so a kernel
  // that reads memory it never wrote shows up as NaN in tests.
  void poison();

  Device device() const { return device_; }
  size_t capacity() const { return main_.bytes(); }
  size_t used() const { return used_; }              // live bytes now (allocated, not released)
  // The bytes the block must hold for the largest step so far: the highest offset planned.
  // With nothing released it is the sum of the step's requests; with releases, less.
  size_t high_water() const { return high_water_; }
  size_t live_blocks() const { return live_.size(); }
  size_t scratch_capacity() const { return scratch_.bytes(); }
  size_t scratch_high_water() const { return scratch_high_water_; }  // largest scratch request
  // Device memory the workspace needs at its peak: the step's allocations plus the scratch.
  size_t peak_bytes() const { return high_water_ + scratch_high_water_; }
  int spills() const { return spills_this_step_; }   // spill allocations in this step

 private:
  struct Block {
    size_t offset, bytes;
    bool spilled;
  };
  size_t place(size_t bytes);  // the offset of a new block (best fit, else the top)
  Device device_;
  Buffer main_;
  Buffer scratch_;
  std::vector<Buffer> spill_;                  // scratch spills, freed by reset()
  std::unordered_map<void*, Buffer> spilled_;  // block spills, freed on release or reset()
  std::unordered_map<void*, Block> live_;      // every block handed out and not released
  std::map<size_t, size_t> free_;              // free ranges below top_: offset -> bytes
  size_t top_ = 0;  // end of the highest block planned
  size_t used_ = 0;
  size_t high_water_ = 0;
  size_t scratch_high_water_ = 0;
  int spills_this_step_ = 0;
};

}  // namespace tessera
