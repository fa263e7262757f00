// Augmentation math shared by both backends: the recipe (AugmentSpec), the per-image random
// parameters (AugmentParams, drawn from Philox), the pixel operations, and the whole per-image
// pipeline written once as a template over a "team" of workers:
//   CPU:  SerialTeam, one worker per image (images run in parallel under OpenMP);
//   CUDA: a thread block per image, team.sync() = __syncthreads() (kernels/cuda/augment.cu).
// Both backends therefore run the same sequence of float operations on every pixel.
//
// Why CPU and CUDA agree bit for bit: every operation here is an IEEE single-precision add,
// multiply, divide or sqrt (correctly rounded on both: the CUDA build does not use fast math),
// floor / min / max (exact), integer arithmetic, or ldexpf (exact). Transcendentals (exp, sin,
// cos) are our own polynomials made of those operations, not the libraries' (which differ by
// an ulp between glibc and CUDA). Contraction of a * b + c into an FMA is switched off for the
// two files that run this code (Makefile: -ffp-contract=off, nvcc --fmad=false), so both round
// the product and the sum separately. Reductions are integer (histograms; the mean grey level
// is a sum of 16.16 fixed-point values), so their order does not matter. Hence the tests
// compare CPU and CUDA outputs with tolerance 0.
//
// Randomness: the parameters of image `key`, view `view`, at `epoch` are words
// [(key * kAugmentMaxViews + view) * kAugmentDrawsPerView, ... + kAugmentDrawsPerView) of
// Philox(seed, subsequence(kStreamAugment, epoch)): a pure function of (seed, epoch, key, view).
//
// Conventions: images are planar (C, H, W); values are floats in [0, 1] until the final
// normalisation (x - mean[c]) / std[c]. Pixel centres sit at integer + 0.5 (PyTorch's
// align_corners=False). Tests: tests/augment_test.cpp.
#pragma once

#include <math.h>
#include <stdint.h>

#include "kernels/common/hd.h"
#include "kernels/common/philox.h"

// Every function here has internal linkage (static): the CPU backend compiles them without
// FMA contraction, and a test or tool that includes this header with the default flags must
// not be able to lend the linker its contracted copy of the same inline function.
#define TS_AUGMENT_FN static TS_HD

namespace kernels {

enum AugmentRecipe : int32_t {
  kRecipeNormalize = 0,       // evaluation: normalisation only
  kRecipeByol = 1,            // one BYOL view (crop, flip, jitter, grey, blur, solarize)
  kRecipeFixmatchWeak = 2,    // flip + reflect-pad translation
  kRecipeFixmatchStrong = 3,  // weak + RandAugment + Cutout
};

// The 14 RandAugment operations of FixMatch (REFERENCE.md).
enum RandAugmentOp : int32_t {
  kRaIdentity, kRaAutoContrast, kRaEqualize, kRaBrightness, kRaColor, kRaContrast, kRaSharpness,
  kRaPosterize, kRaSolarize, kRaRotate, kRaShearX, kRaShearY, kRaTranslateX, kRaTranslateY,
  kRaOpCount
};

constexpr int kAugmentMaxViews = 4;       // views per image and epoch with their own draws
constexpr int kAugmentDrawsPerView = 64;  // Philox words reserved per (image, view)
constexpr int kAugmentMaxRaOps = 4;
constexpr int kAugmentMaxBlurRadius = 16;

// One view's recipe. Plain data: passed by value to the CUDA kernel.
struct AugmentSpec {
  int32_t recipe = kRecipeNormalize;
  int32_t channels = 3, in_h = 32, in_w = 32, out_h = 32, out_w = 32;
  float mean[3] = {0.f, 0.f, 0.f};
  float std[3] = {1.f, 1.f, 1.f};
  uint64_t seed = 0;
  int32_t view = 0;  // < kAugmentMaxViews
  // BYOL (probabilities are this view's).
  float scale_lo = 0.08f, scale_hi = 1.0f;                    // crop area / image area
  float log_ratio_lo = -0.28768207f, log_ratio_hi = 0.28768207f;  // log(3/4), log(4/3)
  int32_t crop_bicubic = 0;  // resize the crop bicubically (PIL's, as BYOL and solo-learn), not bilinearly
  float flip_prob = 0.5f;
  float jitter_prob = 0.8f, brightness = 0.4f, contrast = 0.4f, saturation = 0.2f, hue = 0.1f;
  float gray_prob = 0.2f;
  float blur_prob = 1.0f, sigma_lo = 0.1f, sigma_hi = 2.0f;
  int32_t blur_radius = 1;  // kernel size 2r + 1, about 10% of the side as in BYOL (23 at 224)
  float solarize_prob = 0.0f;
  // FixMatch.
  int32_t pad = 4;               // translation up to `pad` pixels (12.5% of 32)
  int32_t ra_ops = 2;            // RandAugment ops per image
  float ra_prob = 0.5f;          // each applied with this probability
  int32_t ra_levels = 10;        // magnitude drawn from 1..ra_levels, used as level / ra_levels
  float ra_max_rotate = 30.0f;   // degrees
  float ra_max_shear = 0.3f;
  float ra_max_translate = 0.3f;  // fraction of the side
  float cutout_frac = 0.5f;      // Cutout side drawn from 1..cutout_frac * min(H, W)
};

// Everything random about one image in one view.
struct AugmentParams {
  int32_t crop_y, crop_x, crop_h, crop_w;  // BYOL random resized crop (integer box)
  int32_t flip;
  int32_t shift_y, shift_x;  // FixMatch: crop offset inside the reflect-padded image, 0..2 pad
  int32_t jitter;
  int32_t order[4];  // colour jitter order: 0 brightness, 1 contrast, 2 saturation, 3 hue
  float brightness, contrast, saturation, hue;
  int32_t gray, blur, solarize;
  float sigma;
  int32_t ra_op[kAugmentMaxRaOps], ra_apply[kAugmentMaxRaOps];
  float ra_level[kAugmentMaxRaOps];  // magnitude / ra_levels in (0, 1], signed for geometric ops
  int32_t cut_y0, cut_x0, cut_y1, cut_x1;  // Cutout box [y0, y1) x [x0, x1); empty when no cutout
};

// ---- small deterministic math -------------------------------------------------------------

// min / max as comparisons: glibc's fminf / fmaxf are out-of-line calls (NaN rules) that cost
// a third of the CPU time; no NaN reaches these.
TS_AUGMENT_FN float ts_min(float a, float b) { return a < b ? a : b; }
TS_AUGMENT_FN float ts_max(float a, float b) { return a > b ? a : b; }
TS_AUGMENT_FN float clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
TS_AUGMENT_FN int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// exp(x) for x <= 80 from + * and ldexpf: x = k ln2 + r, |r| <= ln2 / 2 (Cody-Waite split
// of ln2, k * hi exact), Taylor to r^8 (truncation < 1e-10). Below -87 the result is 0.
TS_AUGMENT_FN float ts_expf(float x) {
  if (x < -87.0f) return 0.0f;
  const float k = floorf(x * 1.44269504f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln2 = hi - lo
  float p = 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return ldexpf(p, static_cast<int>(k));
}

// sin and cos for |x| <= pi / 2 by Taylor series to x^15 / x^14 (error < 1e-9).
TS_AUGMENT_FN float ts_sinf(float x) {
  const float x2 = x * x;
  float p = -1.0f / 1307674368000.0f;
  p = p * x2 + 1.0f / 6227020800.0f;
  p = p * x2 - 1.0f / 39916800.0f;
  p = p * x2 + 1.0f / 362880.0f;
  p = p * x2 - 1.0f / 5040.0f;
  p = p * x2 + 1.0f / 120.0f;
  p = p * x2 - 1.0f / 6.0f;
  p = p * x2 + 1.0f;
  return p * x;
}
TS_AUGMENT_FN float ts_cosf(float x) {
  const float x2 = x * x;
  float p = -1.0f / 87178291200.0f;
  p = p * x2 + 1.0f / 479001600.0f;
  p = p * x2 - 1.0f / 3628800.0f;
  p = p * x2 + 1.0f / 40320.0f;
  p = p * x2 - 1.0f / 720.0f;
  p = p * x2 + 1.0f / 24.0f;
  p = p * x2 - 0.5f;
  p = p * x2 + 1.0f;
  return p;
}

// [0, 1] float -> nearest uint8 level, and back.
TS_AUGMENT_FN int to_level(float x) { return static_cast<int>(floorf(clamp01(x) * 255.0f + 0.5f)); }
TS_AUGMENT_FN float from_level(int q) { return static_cast<float>(q) / 255.0f; }

// Reflect an index into [0, n) without repeating the edge (PyTorch's "reflect"); |overhang| < n.
TS_AUGMENT_FN int reflect_index(int i, int n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

// ---- pixel operations (values in [0, 1]) --------------------------------------------------

// torchvision's blend: ratio * a + (1 - ratio) * b, clamped. Every enhance op is one blend
// towards a "degenerate" image: black (brightness), the mean grey (contrast), the grey image
// (saturation / PIL Color), a smoothed image (sharpness).
TS_AUGMENT_FN float blend(float a, float b, float ratio) { return clamp01(ratio * a + (1.0f - ratio) * b); }

// ITU-R 601 luma, torchvision's rgb_to_grayscale weights.
TS_AUGMENT_FN float luma(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

TS_AUGMENT_FN float solarize(float x, float threshold) { return x >= threshold ? 1.0f - x : x; }

// Keep the top `bits` bits of the uint8 level.
TS_AUGMENT_FN float posterize(float x, int bits) {
  const int mask = ~((1 << (8 - bits)) - 1) & 0xFF;
  return from_level(to_level(x) & mask);
}

// Hue rotation through HSV (torchvision's _rgb2hsv / _hsv2rgb); shift in turns (-0.5, 0.5).
TS_AUGMENT_FN void shift_hue(float* r, float* g, float* b, float shift) {
  const float maxc = ts_max(*r, ts_max(*g, *b));
  const float minc = ts_min(*r, ts_min(*g, *b));
  const float cr = maxc - minc;
  const float v = maxc;
  const float s = cr / (cr == 0.0f ? 1.0f : maxc);
  const float div = cr == 0.0f ? 1.0f : cr;
  const float rc = (maxc - *r) / div, gc = (maxc - *g) / div, bc = (maxc - *b) / div;
  float h;
  if (maxc == *r) h = bc - gc;
  else if (maxc == *g) h = 2.0f + rc - bc;
  else h = 4.0f + gc - rc;
  h = h / 6.0f + 1.0f;
  h = h - floorf(h);
  h = h + shift;
  h = h - floorf(h);  // hue in [0, 1)
  const float h6 = h * 6.0f;
  const float fi = floorf(h6);
  const float f = h6 - fi;
  const int i = static_cast<int>(fi) % 6;
  const float p = clamp01(v * (1.0f - s));
  const float q = clamp01(v * (1.0f - s * f));
  const float t = clamp01(v * (1.0f - s * (1.0f - f)));
  switch (i) {
    case 0: *r = v; *g = t; *b = p; break;
    case 1: *r = q; *g = v; *b = p; break;
    case 2: *r = p; *g = v; *b = t; break;
    case 3: *r = p; *g = q; *b = v; break;
    case 4: *r = t; *g = p; *b = v; break;
    default: *r = v; *g = p; *b = q; break;
  }
}

// Bilinear sample of a uint8 plane region [y0, y0 + h) x [x0, x0 + w) at continuous pixel
// coordinates (sy, sx) relative to the region, edges clamped (PyTorch's upsample_bilinear2d).
// Returns [0, 1].
TS_AUGMENT_FN float sample_region_u8(const uint8_t* plane, int stride, int y0, int x0, int h, int w,
                             float sy, float sx) {
  sy = ts_max(sy, 0.0f);
  sx = ts_max(sx, 0.0f);
  const int iy = static_cast<int>(sy), ix = static_cast<int>(sx);
  const int dy = iy < h - 1 ? stride : 0, dx = ix < w - 1 ? 1 : 0;
  const float ly = sy - static_cast<float>(iy), lx = sx - static_cast<float>(ix);
  const uint8_t* p = plane + (y0 + iy) * stride + (x0 + ix);
  const float top = (1.0f - lx) * static_cast<float>(p[0]) + lx * static_cast<float>(p[dx]);
  const float bottom = (1.0f - lx) * static_cast<float>(p[dy]) + lx * static_cast<float>(p[dy + dx]);
  return ((1.0f - ly) * top + ly * bottom) / 255.0f;
}

// PIL's bicubic filter (a = -0.5) at distance x.
TS_AUGMENT_FN float bicubic_weight(float x) {
  const float a = -0.5f;
  x = fabsf(x);
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * a;
  return 0.0f;
}

// The taps of output pixel centre `centre` (region coordinates, pixel i spans [i, i + 1)) of a
// side of `size` resampled by `scale` = size / output side, as PIL's precompute_coeffs: the
// support widens by the scale when shrinking (antialiasing), taps outside the region are
// dropped and the rest renormalised. First tap and end in *lo, *hi; 1 / support scale in *ss.
TS_AUGMENT_FN void bicubic_taps(float centre, float scale, int size, int* lo, int* hi, float* ss) {
  const float filter_scale = scale > 1.0f ? scale : 1.0f;
  const float support = 2.0f * filter_scale;
  *ss = 1.0f / filter_scale;
  const int a = static_cast<int>(centre - support + 0.5f), b = static_cast<int>(centre + support + 0.5f);
  *lo = a > 0 ? a : 0;
  *hi = b < size ? b : size;
}

// Bicubic sample of a uint8 plane region [y0, y0 + h) x [x0, x0 + w) for the output pixel whose
// centre maps to (cy, cx) in region coordinates, scales as bicubic_taps. PIL's resize of the
// crop in float (its 8-bit path also rounds between the two passes, which this does not);
// values may overshoot [0, 1] slightly, as bicubic does. Returns the value / 255.
TS_AUGMENT_FN float sample_region_u8_bicubic(const uint8_t* plane, int stride, int y0, int x0, int h, int w, float cy,
                                             float cx, float scale_y, float scale_x) {
  int ylo, yhi, xlo, xhi;
  float ssy, ssx;
  bicubic_taps(cy, scale_y, h, &ylo, &yhi, &ssy);
  bicubic_taps(cx, scale_x, w, &xlo, &xhi, &ssx);
  float wx_total = 0.0f;
  for (int x = xlo; x < xhi; ++x) wx_total += bicubic_weight((static_cast<float>(x) - cx + 0.5f) * ssx);
  float acc = 0.0f, wy_total = 0.0f;
  for (int y = ylo; y < yhi; ++y) {
    const float wy = bicubic_weight((static_cast<float>(y) - cy + 0.5f) * ssy);
    const uint8_t* row = plane + (y0 + y) * stride + x0;
    float r = 0.0f;
    for (int x = xlo; x < xhi; ++x) r += bicubic_weight((static_cast<float>(x) - cx + 0.5f) * ssx) * static_cast<float>(row[x]);
    acc += wy * r;
    wy_total += wy;
  }
  return acc / (wy_total * wx_total) / 255.0f;  // the two axes' weights renormalised at once
}

// Nearest sample of a float plane (h, w) at continuous pixel coordinates (pixel centres at
// integers): the pixel whose square holds the point, as PIL's NEAREST, which the FixMatch
// references' affine RandAugment ops use; outside the plane reads `fill` (grey here).
TS_AUGMENT_FN float sample_nearest_fill(const float* plane, int h, int w, float sy, float sx, float fill) {
  const float fy = floorf(sy + 0.5f), fx = floorf(sx + 0.5f);
  if (!(fy >= 0.0f && fy < static_cast<float>(h) && fx >= 0.0f && fx < static_cast<float>(w))) return fill;
  return plane[static_cast<int>(fy) * w + static_cast<int>(fx)];
}

// Normalised Gaussian taps w[0..2r] for offsets -r..r (torchvision normalises the kernel).
TS_AUGMENT_FN void gaussian_weights(float sigma, int radius, float* w) {
  const float inv = -1.0f / (2.0f * sigma * sigma);
  float total = 0.0f;
  for (int k = -radius; k <= radius; ++k) {
    const float d = static_cast<float>(k);
    w[k + radius] = ts_expf(d * d * inv);
    total += w[k + radius];
  }
  for (int k = 0; k <= 2 * radius; ++k) w[k] = w[k] / total;
}

// ---- per-image parameter draw --------------------------------------------------------------

// Integer in [0, n) from a uniform in (0, 1].
TS_AUGMENT_FN int draw_below(float u, int n) {
  const int k = static_cast<int>(u * static_cast<float>(n));
  return k < n ? k : n - 1;
}
TS_AUGMENT_FN float draw_range(float u, float lo, float hi) { return lo + (hi - lo) * u; }

// The parameters of image `key` (its dataset index) drawn in `epoch` (or step), for s.view.
TS_AUGMENT_FN AugmentParams draw_augment_params(const AugmentSpec& s, int64_t epoch, int64_t key) {
  const uint64_t offset =
      (static_cast<uint64_t>(key) * kAugmentMaxViews + static_cast<uint64_t>(s.view)) * kAugmentDrawsPerView;
  PhiloxState rng(s.seed, philox_subsequence(kStreamAugment, static_cast<uint64_t>(epoch)), offset);
  AugmentParams p = {};
  p.cut_y0 = p.cut_y1 = p.cut_x0 = p.cut_x1 = 0;
  if (s.recipe == kRecipeByol) {
    // torchvision RandomResizedCrop.get_params: up to 10 tries, then a centre crop. 22 words.
    const float area = static_cast<float>(s.in_h) * static_cast<float>(s.in_w);
    bool found = false;
    for (int attempt = 0; attempt < 10 && !found; ++attempt) {
      const float target = area * draw_range(rng.uniform(), s.scale_lo, s.scale_hi);
      const float ratio = ts_expf(draw_range(rng.uniform(), s.log_ratio_lo, s.log_ratio_hi));
      const int w = static_cast<int>(floorf(sqrtf(target * ratio) + 0.5f));
      const int h = static_cast<int>(floorf(sqrtf(target / ratio) + 0.5f));
      if (w > 0 && w <= s.in_w && h > 0 && h <= s.in_h) {
        p.crop_h = h;
        p.crop_w = w;
        p.crop_y = draw_below(rng.uniform(), s.in_h - h + 1);
        p.crop_x = draw_below(rng.uniform(), s.in_w - w + 1);
        found = true;
      }
    }
    if (!found) {
      const float in_ratio = static_cast<float>(s.in_w) / static_cast<float>(s.in_h);
      const float rlo = ts_expf(s.log_ratio_lo), rhi = ts_expf(s.log_ratio_hi);
      p.crop_w = s.in_w;
      p.crop_h = s.in_h;
      if (in_ratio < rlo) p.crop_h = static_cast<int>(floorf(static_cast<float>(s.in_w) / rlo + 0.5f));
      else if (in_ratio > rhi) p.crop_w = static_cast<int>(floorf(static_cast<float>(s.in_h) * rhi + 0.5f));
      p.crop_y = (s.in_h - p.crop_h) / 2;
      p.crop_x = (s.in_w - p.crop_w) / 2;
    }
    p.flip = rng.uniform() <= s.flip_prob;
    p.jitter = rng.uniform() <= s.jitter_prob;
    p.brightness = draw_range(rng.uniform(), ts_max(0.0f, 1.0f - s.brightness), 1.0f + s.brightness);
    p.contrast = draw_range(rng.uniform(), ts_max(0.0f, 1.0f - s.contrast), 1.0f + s.contrast);
    p.saturation = draw_range(rng.uniform(), ts_max(0.0f, 1.0f - s.saturation), 1.0f + s.saturation);
    p.hue = draw_range(rng.uniform(), -s.hue, s.hue);
    for (int k = 0; k < 4; ++k) p.order[k] = k;
    for (int k = 3; k > 0; --k) {  // Fisher-Yates
      const int j = draw_below(rng.uniform(), k + 1);
      const int t = p.order[k];
      p.order[k] = p.order[j];
      p.order[j] = t;
    }
    p.gray = rng.uniform() <= s.gray_prob;
    p.blur = rng.uniform() <= s.blur_prob;
    p.sigma = draw_range(rng.uniform(), s.sigma_lo, s.sigma_hi);
    p.solarize = rng.uniform() <= s.solarize_prob;
  } else if (s.recipe == kRecipeFixmatchWeak || s.recipe == kRecipeFixmatchStrong) {
    p.flip = rng.uniform() <= s.flip_prob;
    p.shift_y = draw_below(rng.uniform(), 2 * s.pad + 1);
    p.shift_x = draw_below(rng.uniform(), 2 * s.pad + 1);
    if (s.recipe == kRecipeFixmatchStrong) {
      for (int k = 0; k < s.ra_ops; ++k) {
        p.ra_op[k] = draw_below(rng.uniform(), kRaOpCount);
        const float level = static_cast<float>(1 + draw_below(rng.uniform(), s.ra_levels)) /
                            static_cast<float>(s.ra_levels);
        p.ra_apply[k] = rng.uniform() <= s.ra_prob;
        p.ra_level[k] = rng.uniform() <= 0.5f ? -level : level;
      }
      // Cutout: side 1..cutout_frac * min(H, W), centre anywhere, clipped to the image.
      const int side_max = static_cast<int>(s.cutout_frac * static_cast<float>(s.out_h < s.out_w ? s.out_h : s.out_w));
      if (side_max >= 1) {
        const int side = 1 + draw_below(rng.uniform(), side_max);
        const int cy = draw_below(rng.uniform(), s.out_h), cx = draw_below(rng.uniform(), s.out_w);
        p.cut_y0 = clampi(cy - side / 2, 0, s.out_h);
        p.cut_x0 = clampi(cx - side / 2, 0, s.out_w);
        p.cut_y1 = clampi(cy - side / 2 + side, 0, s.out_h);
        p.cut_x1 = clampi(cx - side / 2 + side, 0, s.out_w);
      }
    }
  }
  return p;
}

}  // namespace kernels
