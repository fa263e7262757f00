// Batched augmentation: uint8 images (N, C, H, W) in, normalised float views (N, C, H', W')
// out, one recipe (kernels/common/augment_ops.h AugmentSpec) per call, per-image parameters
// drawn from Philox keyed by (seed, epoch, key, view). The per-image pipeline is
// kernels/common/augment_pipeline.h, shared by both backends; CPU: OpenMP across images;
// CUDA: one thread block per image, one launch per call.
// Cost per output value: BYOL about 4 source reads and 40 FLOPs for the bilinear crop and the
// colour ops, plus 2 (2r + 1) FLOPs for the blur; FixMatch strong up to two resampling passes
// (scratch copy + 4 reads each). Bytes: C H W in, 4 C H' W' out (scratch stays in cache on
// the CPU and in L2 on the GPU for small images).
// Tests: tests/augment_test.cpp (per-op expectations, reproducibility, CUDA vs CPU equality).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common/augment_ops.h"
#include "kernels/common/cost.h"

namespace kernels {

// "" when the spec can run, else what is wrong (the launchers throw std::invalid_argument).
inline std::string augment_spec_problem(const AugmentSpec& s) {
  if (s.channels != 1 && s.channels != 3) return "channels must be 1 or 3, found " + std::to_string(s.channels);
  if (s.in_h < 2 || s.in_w < 2 || s.out_h < 2 || s.out_w < 2)
    return "image sides must be at least 2 pixels";
  if (s.recipe < kRecipeNormalize || s.recipe > kRecipeFixmatchStrong) return "unknown recipe";
  if (s.recipe != kRecipeByol && (s.out_h != s.in_h || s.out_w != s.in_w))
    return "only the byol recipe resizes: output size must equal input size";
  if (s.view < 0 || s.view >= kAugmentMaxViews) return "view must be in [0, 4)";
  if (s.blur_radius < 0 || s.blur_radius > kAugmentMaxBlurRadius || s.blur_radius >= s.out_h ||
      s.blur_radius >= s.out_w)
    return "blur radius must be in [0, 16] and smaller than the output side";
  if (!(s.sigma_lo > 0.0f) || s.sigma_hi < s.sigma_lo) return "blur sigma range must be positive";
  if (!(s.scale_lo > 0.0f) || s.scale_hi < s.scale_lo || s.scale_hi > 1.0f) return "crop scale must be in (0, 1]";
  if (s.log_ratio_hi < s.log_ratio_lo) return "crop ratio range is empty";
  if (s.pad < 0 || s.pad >= s.in_h || s.pad >= s.in_w) return "translation pad must be smaller than the side";
  if (s.ra_ops < 0 || s.ra_ops > kAugmentMaxRaOps) return "RandAugment ops per image must be in [0, 4]";
  if (s.ra_levels < 1) return "RandAugment levels must be at least 1";
  if (s.ra_max_rotate < 0.0f || s.ra_max_rotate > 90.0f) return "RandAugment rotation must be in [0, 90] degrees";
  for (int c = 0; c < s.channels; ++c)
    if (!(s.std[c] > 0.0f)) return "std must be positive";
  return "";
}

}  // namespace kernels

#define TS_AUGMENT_KERNELS                                                                     \
  /* out[i] = view spec.view of images[indices[i]], parameters keyed by (spec.seed, epochs[i], \
     indices[i], spec.view). images (num_images, C, in_h, in_w) u8; indices, epochs (n) i64, \
     on the same device; out, scratch (n, C, out_h, out_w). An index outside [0, num_images) \
     is never read: the CPU throws std::out_of_range naming it; the CUDA kernel prints it and \
     traps (a launch failure reported at the next synchronisation; by this kernel with the   \
     sync check on, engine/device.h). */                                                     \
  void augment(const uint8_t* images, int64_t num_images, const int64_t* indices,             \
               const int64_t* epochs, int64_t n, const AugmentSpec& spec, float* out,         \
               float* scratch);

namespace kernels::cpu {
TS_AUGMENT_KERNELS
}
namespace kernels::cuda {
TS_AUGMENT_KERNELS
}
#undef TS_AUGMENT_KERNELS

// Cost for the profiler (kernels/common/cost.h), from the estimate in this file's header:
// bytes C H W in and 4 C H' W' out per image, about 40 FLOPs per output value.
namespace kernels {
TS_KERNEL_COST(augment, const uint8_t*, int64_t, const int64_t*, const int64_t*, int64_t n,
               const AugmentSpec& spec, float*, float*) {
  const double in = 1.0 * spec.channels * spec.in_h * spec.in_w;
  const double out = 1.0 * spec.channels * spec.out_h * spec.out_w;
  return {n * (in + 4.0 * out + 16.0), n * 40.0 * out};
}
}  // namespace kernels
