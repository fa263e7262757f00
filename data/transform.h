// The hook between the loader and the augmentations: a Transform turns the uint8 images of a
// batch into one float view. The loader decides which images (data/sampler.h) and where the
// floats go; a Transform decides what is done to each image.
//
// Two kinds, told apart by device():
//   CPU   apply() runs on the loader's background thread and writes a host tensor (pinned
//         staging for GPU runs); the loader uploads it asynchronously on the engine stream.
//   CUDA  apply() runs on the thread that calls Loader::next() and launches batched kernels on
//         the engine stream, writing the device tensor directly; the transform keeps its own
//         device copy of the dataset's uint8 images. It must not synchronise.
//
// Per-image randomness must be a pure function of (seed, epoch, dataset index, view), e.g.
// Philox(seed, kStreamAugment, step = f(epoch, view), index = dataset index), never of the
// batch slot or of thread timing, so a batch is reproducible, a resumed run sees the same
// views, and the CPU and CUDA versions of an augmentation agree.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "engine/tensor.h"

namespace tessera::data {

struct ViewRequest {
  const Dataset* dataset = nullptr;
  int64_t count = 0;                        // B
  const int64_t* indices = nullptr;         // (B) dataset indices, host memory
  const int64_t* epochs = nullptr;          // (B) the epoch each sample was drawn in, host memory
  const int64_t* indices_device = nullptr;  // (B) the same on the device, for CUDA transforms only
  const int64_t* epochs_device = nullptr;   // (B) the same on the device, for CUDA transforms only
  uint64_t seed = 0;
  int view = 0;  // which view of a sample: BYOL 0 / 1; FixMatch labeled 2, unlabeled weak 0, strong 1
};

class Transform {
 public:
  virtual ~Transform() = default;
  virtual Device device() const = 0;
  // (C, H, W) of one output view of an image of `d` (a crop may change H and W).
  virtual Shape view_shape(const Dataset& d) const { return Shape{d.channels, d.height, d.width}; }
  // out: f32 (B, C, H, W) on device(), B = r.count.
  virtual void apply(const ViewRequest& r, const Tensor& out) = 0;
};

// (pixel / 255 - mean[c]) / std[c] with the dataset's constants, nothing else: evaluation,
// and training before augmentations exist. Pixel math in kernels/common would be shared
// with a CUDA twin; this one is host-only and runs on the loader thread.
class NormalizeTransform : public Transform {
 public:
  Device device() const override { return Device::CPU; }
  void apply(const ViewRequest& r, const Tensor& out) override;
};

}  // namespace tessera::data
