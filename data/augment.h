// Augmentation pipelines by name, for the batch loader and the tools:
//   byol             two views per image (view 0 and view 1 differ only in their blur and
//                    solarize probabilities: BYOL's asymmetric recipe), random resized crop
//                    to `out_size`, flip, colour jitter, grayscale, blur, solarize;
//   fixmatch-weak    flip + translation up to 12.5% (reflect padding, random crop);
//   fixmatch-strong  weak + RandAugment (2 of 14 ops, random magnitude, each with p 0.5) +
//                    Cutout (grey square up to half the side);
//   normalize        evaluation: (x / 255 - mean) / std only.
// Each call augments one view of a batch: uint8 images in, normalised float out, on the
// device of the tensors (CPU: OpenMP across images; CUDA: one launch). Parameters of image
// `key` come from Philox keyed by (seed, epoch, key, view), so a batch is reproducible and
// both backends produce the same values (kernels/common/augment_ops.h).
//
// Views for the training programs: BYOL views 0 and 1; FixMatch unlabeled weak = view 0 of
// fixmatch-weak, strong = view 1 of fixmatch-strong (independent draws), labeled = view 2 of
// fixmatch-weak.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tensor.h"
#include "engine/workspace.h"
#include "kernels/common/augment_ops.h"

namespace tessera {

enum class Recipe { Normalize, Byol, FixmatchWeak, FixmatchStrong };

Recipe parse_recipe(const std::string& name);  // UsageError naming the accepted names
const char* recipe_name(Recipe r);

struct AugmentOptions {
  int out_size = 0;                        // BYOL output side; 0: the input side
  float blur_prob[2] = {1.0f, 0.1f};       // BYOL views 0, 1 (BYOL paper; solo-learn uses 0 at 32 px)
  float solarize_prob[2] = {0.0f, 0.2f};   // BYOL views 0, 1
  int blur_radius = -1;                    // -1: about 10% of the side (kernel 23 at 224, 3 at 32)
  float crop_scale_lo = 0.08f;             // random resized crop area fraction lower bound
  float jitter_prob = 0.8f;
  float gray_prob = 0.2f;
  float translate = 0.125f;                // FixMatch translation, fraction of the side
  int randaugment_ops = 2;
  float cutout_frac = 0.5f;
};

class AugmentPipeline {
 public:
  // Images of `channels` x height x width; mean / std per channel in [0, 1] units.
  AugmentPipeline(Recipe recipe, int channels, int height, int width, const float* mean, const float* std,
                  uint64_t seed, const AugmentOptions& options = {});

  Recipe recipe() const { return recipe_; }
  int views() const { return recipe_ == Recipe::Byol ? 2 : 1; }  // views the recipe defines
  Shape output_shape(int64_t n) const;                              // (n, C, H', W')

  // The kernel's recipe for one view at one epoch (or step).
  kernels::AugmentSpec spec(int view, uint64_t epoch) const;

  // out[i] = view `view` of images[rows[i]] (rows undefined: images[i]) with parameters keyed
  // by keys[i], normally the dataset index. images (M, C, H, W) u8; rows, keys (n) i32;
  // out (n, C, H', W') f32; all on one device. Scratch comes from `ws` (same device).
  void run(int view, uint64_t epoch, const Tensor& images, const Tensor& rows, const Tensor& keys,
           const Tensor& out, Workspace& ws) const;

 private:
  Recipe recipe_;
  kernels::AugmentSpec base_;
  AugmentOptions options_;
};

}  // namespace tessera
