// The per-image augmentation pipeline, written once for both backends as templates over a
// Team: the workers that process one image together.
//
//   struct Team {
//     int rank, size;                                  // this worker, number of workers
//     void sync();                                     // all workers reach this point
//     void add(int32_t* counter, int32_t v);           // atomic += (histograms)
//     long long sum(long long v, unsigned long long* slot);  // all-reduce sum, same on all
//     template <class F> void grid(int rows, int cols, F f);  // f(r, c) for every cell, split
//   };                                                        // over the workers
//
// grid() exists because the obvious loop over a flat index needs integer divisions per pixel
// to recover (channel, row, column), which dominated the CPU time; the CPU team runs nested
// loops instead, the CUDA team a strided flat loop with one division. The result of each cell
// depends only on its coordinates, so the iteration order does not change any value.
//
// The CPU uses a one-worker team per image (kernels/cpu/augment.cpp), CUDA a thread block
// (kernels/cuda/augment.cu). Every stage reads and writes the image's own slice of the output
// (and of the scratch buffer), loops over pixels with stride team.size, and ends with
// team.sync(); all branches depend only on the image's parameters, so every worker of a team
// takes them together. See kernels/common/augment_ops.h for why the results are identical.
#pragma once

#include "kernels/common/augment_ops.h"

namespace kernels {

// What a team shares while it works on one image (CUDA: shared memory).
struct AugmentShared {
  AugmentParams params;
  int32_t table[3 * 256];  // per-channel histogram, then the lookup table built from it
  float taps[2 * kAugmentMaxBlurRadius + 1];
  unsigned long long acc;
};

// ---- geometry: uint8 source -> float [0, 1] view ----------------------------------------

template <class Team>
TS_AUGMENT_FN void load_view(Team& t, const AugmentSpec& s, const AugmentParams& p, const uint8_t* src,
                     float* img) {
  const int C = s.channels, H = s.out_h, W = s.out_w, n = H * W, in_n = s.in_h * s.in_w;
  if (s.recipe == kRecipeByol) {
    // Random resized crop (bilinear or PIL's bicubic, half-pixel centres) then horizontal flip.
    const float scale_y = static_cast<float>(p.crop_h) / static_cast<float>(H);
    const float scale_x = static_cast<float>(p.crop_w) / static_cast<float>(W);
    t.grid(C * H, W, [&](int r, int x) {
      const int c = r / H, y = r - c * H;
      const int xs = p.flip ? W - 1 - x : x;
      const float cy = (static_cast<float>(y) + 0.5f) * scale_y, cx = (static_cast<float>(xs) + 0.5f) * scale_x;
      img[r * W + x] = s.crop_bicubic ? sample_region_u8_bicubic(src + c * in_n, s.in_w, p.crop_y, p.crop_x, p.crop_h,
                                                                  p.crop_w, cy, cx, scale_y, scale_x)
                                      : sample_region_u8(src + c * in_n, s.in_w, p.crop_y, p.crop_x, p.crop_h,
                                                         p.crop_w, cy - 0.5f, cx - 0.5f);
    });
  } else if (s.recipe == kRecipeFixmatchWeak || s.recipe == kRecipeFixmatchStrong) {
    // Flip, then a crop at (shift_y, shift_x) of the image reflect-padded by `pad`.
    t.grid(C * H, W, [&](int r, int x) {
      const int c = r / H, y = r - c * H;
      const int py = reflect_index(y + p.shift_y - s.pad, H);
      const int px = reflect_index(x + p.shift_x - s.pad, W);
      const int sx = p.flip ? W - 1 - px : px;
      img[r * W + x] = from_level(src[c * in_n + py * s.in_w + sx]);
    });
  } else {
    for (int i = t.rank; i < C * n; i += t.size) img[i] = from_level(src[i]);
  }
  t.sync();
}

// ---- colour operations ---------------------------------------------------------------------

// Mean grey level of the image: luma for 3 channels, the channel for 1. The sum runs over
// 16.16 fixed-point values so it is exact in any order (CPU loop or CUDA block).
template <class Team>
TS_AUGMENT_FN float mean_grey(Team& t, const float* img, int C, int n, AugmentShared& sh) {
  long long local = 0;
  for (int i = t.rank; i < n; i += t.size) {
    const float g = C == 3 ? luma(img[i], img[n + i], img[2 * n + i]) : img[i];
    local += static_cast<long long>(floorf(g * 65536.0f + 0.5f));
  }
  const long long total = t.sum(local, &sh.acc);
  return static_cast<float>(static_cast<double>(total) / (65536.0 * static_cast<double>(n)));
}

template <class Team>
TS_AUGMENT_FN void adjust_brightness(Team& t, float* img, int count, float factor) {
  for (int i = t.rank; i < count; i += t.size) img[i] = clamp01(factor * img[i]);
  t.sync();
}

template <class Team>
TS_AUGMENT_FN void adjust_contrast(Team& t, float* img, int C, int n, float factor, AugmentShared& sh) {
  const float mean = mean_grey(t, img, C, n, sh);
  for (int i = t.rank; i < C * n; i += t.size) img[i] = blend(img[i], mean, factor);
  t.sync();
}

// Saturation / PIL "Color": blend with the grey image. A no-op on one channel.
template <class Team>
TS_AUGMENT_FN void adjust_saturation(Team& t, float* img, int C, int n, float factor) {
  if (C != 3) return;
  for (int i = t.rank; i < n; i += t.size) {
    const float g = luma(img[i], img[n + i], img[2 * n + i]);
    for (int c = 0; c < 3; ++c) img[c * n + i] = blend(img[c * n + i], g, factor);
  }
  t.sync();
}

template <class Team>
TS_AUGMENT_FN void adjust_hue(Team& t, float* img, int C, int n, float shift) {
  if (C != 3) return;
  for (int i = t.rank; i < n; i += t.size) shift_hue(&img[i], &img[n + i], &img[2 * n + i], shift);
  t.sync();
}

template <class Team>
TS_AUGMENT_FN void to_grayscale(Team& t, float* img, int C, int n) {
  if (C != 3) return;
  for (int i = t.rank; i < n; i += t.size) {
    const float g = luma(img[i], img[n + i], img[2 * n + i]);
    img[i] = img[n + i] = img[2 * n + i] = g;
  }
  t.sync();
}

template <class Team>
TS_AUGMENT_FN void apply_solarize(Team& t, float* img, int count, float threshold) {
  for (int i = t.rank; i < count; i += t.size) img[i] = solarize(img[i], threshold);
  t.sync();
}

template <class Team>
TS_AUGMENT_FN void apply_posterize(Team& t, float* img, int count, int bits) {
  for (int i = t.rank; i < count; i += t.size) img[i] = posterize(img[i], bits);
  t.sync();
}

// Separable Gaussian blur with reflect padding (torchvision's gaussian_blur): rows into
// scratch, then columns back. radius < min(H, W) (checked by the launchers).
template <class Team>
TS_AUGMENT_FN void gaussian_blur(Team& t, float* img, float* tmp, int C, int H, int W, float sigma, int radius,
                         AugmentShared& sh) {
  if (t.rank == 0) gaussian_weights(sigma, radius, sh.taps);
  t.sync();
  const float* taps = sh.taps;
  t.grid(C * H, W, [&](int r, int x) {
    float acc = 0.0f;
    for (int k = -radius; k <= radius; ++k) acc += taps[k + radius] * img[r * W + reflect_index(x + k, W)];
    tmp[r * W + x] = acc;
  });
  t.sync();
  t.grid(C * H, W, [&](int r, int x) {
    const int c = r / H, y = r - c * H;
    float acc = 0.0f;
    for (int k = -radius; k <= radius; ++k) acc += taps[k + radius] * tmp[(c * H + reflect_index(y + k, H)) * W + x];
    img[r * W + x] = acc;
  });
  t.sync();
}

// Equalize (PIL ImageOps.equalize) or autocontrast (PIL ImageOps.autocontrast, no cutoff):
// a per-channel histogram of uint8 levels, a lookup table built from it, applied.
template <class Team>
TS_AUGMENT_FN void histogram_remap(Team& t, float* img, int C, int n, bool equalize, AugmentShared& sh) {
  for (int i = t.rank; i < C * 256; i += t.size) sh.table[i] = 0;
  t.sync();
  int32_t* table = sh.table;
  t.grid(C, n, [&](int c, int i) { t.add(&table[c * 256 + to_level(img[c * n + i])], 1); });
  t.sync();
  for (int c = t.rank; c < C; c += t.size) {
    int32_t* h = sh.table + c * 256;
    int lo = 0, hi = 255, total = 0;
    while (lo < 255 && h[lo] == 0) ++lo;
    while (hi > 0 && h[hi] == 0) --hi;
    for (int v = 0; v < 256; ++v) total += h[v];
    if (equalize) {
      const int step = (total - h[hi]) / 255;
      int run = step / 2;
      for (int v = 0; v < 256; ++v) {
        const int count = h[v];
        h[v] = step == 0 ? v : (run / step < 255 ? run / step : 255);
        run += count;
      }
    } else {
      // (v - lo) * 255 / (hi - lo), truncated: lo -> 0 and hi -> 255 exactly.
      for (int v = 0; v < 256; ++v) h[v] = hi > lo ? clampi((v - lo) * 255 / (hi - lo), 0, 255) : v;
    }
  }
  t.sync();
  t.grid(C, n, [&](int c, int i) { img[c * n + i] = from_level(table[c * 256 + to_level(img[c * n + i])]); });
  t.sync();
}

// PIL ImageEnhance.Sharpness: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]] / 13;
// border pixels keep their value, as in PIL.
template <class Team>
TS_AUGMENT_FN void adjust_sharpness(Team& t, float* img, float* tmp, int C, int H, int W, float factor) {
  const int n = H * W;
  for (int i = t.rank; i < C * n; i += t.size) tmp[i] = img[i];
  t.sync();
  t.grid(C * H, W, [&](int r, int x) {
    const int c = r / H, y = r - c * H;
    if (y == 0 || x == 0 || y == H - 1 || x == W - 1) return;
    const float* q = tmp + c * n;
    float acc = 0.0f;
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) acc += q[(y + dy) * W + x + dx];
    const float smooth = (acc + 4.0f * q[y * W + x]) / 13.0f;
    img[r * W + x] = blend(q[y * W + x], smooth, factor);
  });
  t.sync();
}

// Inverse affine map about the image centre: output pixel (y, x) samples the source at
// (a x' + b y' + cx - 0.5 + tx, d x' + e y' + cy - 0.5 + ty), x' = x + 0.5 - cx etc., taking
// the nearest pixel (PIL's NEAREST, as in FixMatch's TF code and its PyTorch port: moved
// pixels keep their values, no blur). Uncovered area reads grey 0.5 (the references: black).
template <class Team>
TS_AUGMENT_FN void apply_affine(Team& t, float* img, float* tmp, int C, int H, int W, float a, float b, float d,
                        float e, float tx, float ty) {
  const int n = H * W;
  for (int i = t.rank; i < C * n; i += t.size) tmp[i] = img[i];
  t.sync();
  const float cx = 0.5f * static_cast<float>(W), cy = 0.5f * static_cast<float>(H);
  t.grid(C * H, W, [&](int r, int x) {
    const int c = r / H, y = r - c * H;
    const float u = static_cast<float>(x) + 0.5f - cx, v = static_cast<float>(y) + 0.5f - cy;
    const float sx = a * u + b * v + cx - 0.5f + tx;
    const float sy = d * u + e * v + cy - 0.5f + ty;
    img[r * W + x] = sample_nearest_fill(tmp + c * n, H, W, sy, sx, 0.5f);
  });
  t.sync();
}

// One RandAugment op at signed level in [-1, 1] (|level| = magnitude / levels). Factor ops
// use 0.05 + 0.9 |level| (FixMatch's range 0.05..0.95); geometric ops use the sign.
template <class Team>
TS_AUGMENT_FN void apply_randaugment(Team& t, const AugmentSpec& s, int op, float level, float* img, float* tmp,
                             AugmentShared& sh) {
  const int C = s.channels, H = s.out_h, W = s.out_w, n = H * W;
  const float mag = fabsf(level);
  const float factor = 0.05f + 0.9f * mag;
  switch (op) {
    case kRaAutoContrast: histogram_remap(t, img, C, n, false, sh); break;
    case kRaEqualize: histogram_remap(t, img, C, n, true, sh); break;
    case kRaBrightness: adjust_brightness(t, img, C * n, factor); break;
    case kRaColor: adjust_saturation(t, img, C, n, factor); break;
    case kRaContrast: adjust_contrast(t, img, C, n, factor, sh); break;
    case kRaSharpness: adjust_sharpness(t, img, tmp, C, H, W, factor); break;
    case kRaPosterize: apply_posterize(t, img, C * n, 8 - static_cast<int>(floorf(4.0f * mag + 0.5f))); break;
    case kRaSolarize: apply_solarize(t, img, C * n, 1.0f - mag); break;
    case kRaRotate: {
      const float theta = level * s.ra_max_rotate * 0.0174532925f;  // degrees -> radians
      const float cs = ts_cosf(theta), sn = ts_sinf(theta);
      apply_affine(t, img, tmp, C, H, W, cs, sn, -sn, cs, 0.0f, 0.0f);
      break;
    }
    // Shears about the top-left corner (PIL's AFFINE (1, k, 0, 0, 1, 0) in the references): the
    // centred map plus the shift k * cy that moves its fixed point to the corner.
    case kRaShearX: {
      const float k = level * s.ra_max_shear;
      apply_affine(t, img, tmp, C, H, W, 1.0f, k, 0.0f, 1.0f, k * 0.5f * static_cast<float>(H), 0.0f);
      break;
    }
    case kRaShearY: {
      const float k = level * s.ra_max_shear;
      apply_affine(t, img, tmp, C, H, W, 1.0f, 0.0f, k, 1.0f, 0.0f, k * 0.5f * static_cast<float>(W));
      break;
    }
    // Whole pixels, truncated towards zero (the references' int(v * side)).
    case kRaTranslateX:
      apply_affine(t, img, tmp, C, H, W, 1.0f, 0.0f, 0.0f, 1.0f, -truncf(level * s.ra_max_translate * static_cast<float>(W)),
                   0.0f);
      break;
    case kRaTranslateY:
      apply_affine(t, img, tmp, C, H, W, 1.0f, 0.0f, 0.0f, 1.0f, 0.0f,
                   -truncf(level * s.ra_max_translate * static_cast<float>(H)));
      break;
    default: break;  // kRaIdentity
  }
}

template <class Team>
TS_AUGMENT_FN void apply_cutout(Team& t, const AugmentParams& p, float* img, int C, int H, int W) {
  const int bh = p.cut_y1 - p.cut_y0, bw = p.cut_x1 - p.cut_x0;
  if (bh <= 0 || bw <= 0) return;
  t.grid(C * bh, bw, [&](int r, int x) {
    const int c = r / bh, y = p.cut_y0 + r - c * bh;
    img[(c * H + y) * W + p.cut_x0 + x] = 0.5f;
  });
  t.sync();
}

// ---- the whole view ------------------------------------------------------------------------

// src (C, in_h, in_w) uint8 -> img (C, out_h, out_w) normalised floats, with the parameters
// of image `key` in `epoch`; tmp: scratch of the same size as img.
template <class Team>
TS_AUGMENT_FN void augment_image(Team& t, const AugmentSpec& s, const uint8_t* src, int64_t epoch, int64_t key,
                         float* img, float* tmp, AugmentShared& sh) {
  if (t.rank == 0) sh.params = draw_augment_params(s, epoch, key);
  t.sync();
  const AugmentParams& p = sh.params;
  const int C = s.channels, H = s.out_h, W = s.out_w, n = H * W;
  load_view(t, s, p, src, img);
  if (s.recipe == kRecipeByol) {
    if (p.jitter) {
      for (int k = 0; k < 4; ++k) {
        switch (p.order[k]) {
          case 0: adjust_brightness(t, img, C * n, p.brightness); break;
          case 1: adjust_contrast(t, img, C, n, p.contrast, sh); break;
          case 2: adjust_saturation(t, img, C, n, p.saturation); break;
          default: adjust_hue(t, img, C, n, p.hue); break;
        }
      }
    }
    if (p.gray) to_grayscale(t, img, C, n);
    if (p.blur && s.blur_radius > 0) gaussian_blur(t, img, tmp, C, H, W, p.sigma, s.blur_radius, sh);
    if (p.solarize) apply_solarize(t, img, C * n, 0.5f);
  } else if (s.recipe == kRecipeFixmatchStrong) {
    for (int k = 0; k < s.ra_ops; ++k)
      if (p.ra_apply[k]) apply_randaugment(t, s, p.ra_op[k], p.ra_level[k], img, tmp, sh);
    apply_cutout(t, p, img, C, H, W);
  }
  t.grid(C, n, [&](int c, int i) { img[c * n + i] = (img[c * n + i] - s.mean[c]) / s.std[c]; });
  t.sync();
}

}  // namespace kernels
