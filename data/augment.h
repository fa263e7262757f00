// Augmentation pipelines by name, and the Transform (data/transform.h) that plugs them into
// the loader:
//   byol             two views per image (view 0 and view 1 differ only in their blur and
//                    solarize probabilities: BYOL's asymmetric recipe), random resized crop
//                    to `out_size`, flip, colour jitter, grayscale, blur, solarize;
//   fixmatch-weak    flip + translation up to 12.5% (reflect padding, random crop);
//   fixmatch-strong  weak + RandAugment (2 of 14 ops, random magnitude, each with p 0.5;
//                    rotate, shear and translate move whole pixels as PIL's NEAREST does in
//                    FixMatch's TF code and PyTorch port) + Cutout (grey square, side drawn up
//                    to half the image's, the paper's range; the port always cuts 16 px);
//   normalize        evaluation: (x / 255 - mean) / std only.
// Each call augments one view of a batch: uint8 images in, normalised float out, on one
// device (CPU: OpenMP across images; CUDA: one launch). The parameters of image i come from
// Philox keyed by (seed, epoch, dataset index, view), so a batch is reproducible and both
// backends produce the same values (kernels/common/augment_ops.h). Views as the loader
// numbers them: BYOL 0 / 1; FixMatch unlabeled weak 0, strong 1, labeled 2.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/transform.h"
#include "engine/tensor.h"
#include "kernels/common/augment_ops.h"

namespace tessera::data {

enum class Recipe { Normalize, Byol, FixmatchWeak, FixmatchStrong };

Recipe parse_recipe(const std::string& name);  // UsageError naming the accepted names
const char* recipe_name(Recipe r);

struct AugmentOptions {
  int out_size = 0;                       // BYOL output side; 0: the input side
  float blur_prob[2] = {1.0f, 0.1f};      // BYOL views 0, 1 (BYOL paper; solo-learn uses 0 at 32 px)
  float solarize_prob[2] = {0.0f, 0.2f};  // BYOL views 0, 1
  int blur_radius = -1;                   // -1: about 10% of the side (kernel 23 at 224, 3 at 32)
  float crop_scale_lo = 0.08f;            // random resized crop: smallest area fraction
  bool crop_bicubic = false;              // random resized crop: PIL's bicubic, not bilinear
  float jitter_prob = 0.8f;
  float gray_prob = 0.2f;
  float translate = 0.125f;               // FixMatch translation, fraction of the side
  int randaugment_ops = 2;
  float cutout_frac = 0.5f;
};

class AugmentPipeline {
 public:
  // Images of channels x height x width; mean / std per channel in pixel / 255 units.
  AugmentPipeline(Recipe recipe, int channels, int height, int width, const std::vector<float>& mean,
                  const std::vector<float>& std, const AugmentOptions& options = {});

  Recipe recipe() const { return recipe_; }
  int views() const { return recipe_ == Recipe::Byol ? 2 : 1; }  // views the recipe defines
  Shape view_shape() const;                                         // (C, H', W')

  // The kernel's recipe for one view (BYOL views 0 and 1 differ).
  kernels::AugmentSpec spec(int view, uint64_t seed) const;

  // out[i] = view `view` of images[indices[i]] with the parameters of (seed, epochs[i],
  // indices[i], view). images (num_images, C, H, W) u8, indices and epochs (n), out and
  // scratch (n, C, H', W') f32: raw pointers on `device`. On the CPU every index is checked
  // against num_images; on CUDA the caller guarantees it (the loader draws them).
  void run(Device device, const uint8_t* images, int64_t num_images, const int64_t* indices, const int64_t* epochs,
           int64_t n, int view, uint64_t seed, float* out, float* scratch) const;

 private:
  Recipe recipe_;
  kernels::AugmentSpec base_;
  AugmentOptions options_;
};

// A recipe as a loader Transform. On CUDA it keeps a device copy of the dataset's uint8 images
// (made once, here) and launches on the engine stream; on the CPU it runs on the loader's
// thread over the host images. Scratch grows on the first batch and is reused after.
class AugmentTransform : public Transform {
 public:
  AugmentTransform(Recipe recipe, const Dataset& d, Device device, const AugmentOptions& options = {});
  // Another recipe over `other`'s dataset and device that shares its device copy of the
  // images: FixMatch's weak and strong views upload the dataset once, not twice (CIFAR-10's
  // training images are 154 MB a copy).
  AugmentTransform(Recipe recipe, const AugmentTransform& other, const AugmentOptions& options = {});
  Device device() const override { return device_; }
  Shape view_shape(const Dataset& d) const override;
  void apply(const ViewRequest& r, const Tensor& out) override;
  const AugmentPipeline& pipeline() const { return pipeline_; }
  const void* device_images() const { return device_images_ ? device_images_->t.ptr : nullptr; }  // CPU: null

 private:
  AugmentPipeline pipeline_;
  Device device_;
  const Dataset* dataset_;
  std::shared_ptr<const OwnedTensor> device_images_;  // CUDA: the dataset's images, shared
  Buffer scratch_;
};

}  // namespace tessera::data
