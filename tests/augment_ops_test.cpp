// Per-operation tests of the shared augmentation math (kernels/common/augment_ops.h and
// augment_pipeline.h) on tiny images with hand-computed expectations. The stages are called
// directly with a one-worker team, as the CPU backend runs them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/augment_pipeline.h"

namespace {

using kernels::AugmentParams;
using kernels::AugmentShared;
using kernels::AugmentSpec;

struct OneWorker {
  static constexpr int rank = 0;
  static constexpr int size = 1;
  void sync() {}
  void add(int32_t* counter, int32_t v) { *counter += v; }
  long long sum(long long v, unsigned long long*) { return v; }
  template <class F>
  void grid(int rows, int cols, F f) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) f(r, c);
  }
};

AugmentParams no_params() {
  AugmentParams p = {};
  return p;
}

// Geometry stages write levels / 255 exactly when no interpolation happens.
float level(int q) { return static_cast<float>(q) / 255.0f; }

TEST(AugmentOps, HorizontalFlipAndCropOffsetOfFixmatchWeak) {
  // 1 channel 2x3 image, no padding: output = mirrored rows.
  const std::vector<uint8_t> src = {1, 2, 3, 4, 5, 6};
  AugmentSpec s;
  s.recipe = kernels::kRecipeFixmatchWeak;
  s.channels = 1;
  s.in_h = s.out_h = 2;
  s.in_w = s.out_w = 3;
  s.pad = 0;
  AugmentParams p = no_params();
  p.flip = 1;
  std::vector<float> img(6);
  OneWorker t;
  kernels::load_view(t, s, p, src.data(), img.data());
  const int flipped[] = {3, 2, 1, 6, 5, 4};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(img[i], level(flipped[i])) << i;

  // Translation: pad 2, crop offset x = 4: output x reads source reflect(x + 2), so row 0,
  // reflect-padded to [3 2 | 1 2 3 | 2 1], gives [3 2 1].
  s.pad = 2;
  p.flip = 0;
  p.shift_y = 2;
  p.shift_x = 4;
  kernels::load_view(t, s, p, src.data(), img.data());
  const int shifted[] = {3, 2, 1, 6, 5, 4};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(img[i], level(shifted[i])) << i;
  // Pad 1, offset y = 0: output row y reads reflect(y - 1): the rows swap.
  s.pad = 1;
  p.shift_y = 0;
  p.shift_x = 1;
  kernels::load_view(t, s, p, src.data(), img.data());
  const int up[] = {4, 5, 6, 1, 2, 3};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(img[i], level(up[i])) << i;
}

TEST(AugmentOps, ResizedCropIsBilinearWithHalfPixelCentres) {
  // Crop the 2x2 box at (1, 1) of a 3x3 image and upscale it to 4x4. With half-pixel centres
  // the source row / column of output k is (k + 0.5) / 2 - 0.5, clamped at 0: 0, 0.25, 0.75,
  // and 1.25 (clamped to the last row). Expected values by hand from the corners a b / c d.
  const std::vector<uint8_t> src = {9, 9, 9, 9, 0, 100, 9, 200, 255};
  AugmentSpec s;
  s.recipe = kernels::kRecipeByol;
  s.channels = 1;
  s.in_h = s.in_w = 3;
  s.out_h = s.out_w = 4;
  AugmentParams p = no_params();
  p.crop_y = p.crop_x = 1;
  p.crop_h = p.crop_w = 2;
  std::vector<float> img(16);
  OneWorker t;
  kernels::load_view(t, s, p, src.data(), img.data());
  const float w[4] = {0.0f, 0.25f, 0.75f, 1.0f};
  const float a = 0, b = 100, c = 200, d = 255;
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) {
      const float top = a + (b - a) * w[x], bottom = c + (d - c) * w[x];
      EXPECT_NEAR(img[y * 4 + x], (top + (bottom - top) * w[y]) / 255.0f, 1e-6f) << y << "," << x;
    }
  // Flip mirrors the output columns.
  p.flip = 1;
  std::vector<float> flipped(16);
  kernels::load_view(t, s, p, src.data(), flipped.data());
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) EXPECT_EQ(flipped[y * 4 + x], img[y * 4 + 3 - x]);
}

TEST(AugmentOps, BrightnessScalesAndClamps) {
  std::vector<float> img = {0.0f, 0.25f, 0.5f, 0.9f};
  OneWorker t;
  kernels::adjust_brightness(t, img.data(), 4, 1.5f);
  EXPECT_EQ(img[0], 0.0f);
  EXPECT_FLOAT_EQ(img[1], 0.375f);
  EXPECT_FLOAT_EQ(img[2], 0.75f);
  EXPECT_EQ(img[3], 1.0f);  // 1.35 clamped
}

TEST(AugmentOps, ContrastBlendsWithTheMeanGrey) {
  // One channel, mean 0.5: x -> 0.5 + f (x - 0.5).
  std::vector<float> img = {0.25f, 0.75f, 0.25f, 0.75f};
  OneWorker t;
  AugmentShared sh;
  kernels::adjust_contrast(t, img.data(), 1, 4, 0.5f, sh);
  EXPECT_FLOAT_EQ(img[0], 0.375f);
  EXPECT_FLOAT_EQ(img[1], 0.625f);
}

TEST(AugmentOps, SolarizeInvertsAtAndAboveTheThreshold) {
  std::vector<float> img = {0.2f, 0.5f, 0.8f, 1.0f};
  OneWorker t;
  kernels::apply_solarize(t, img.data(), 4, 0.5f);
  EXPECT_EQ(img[0], 0.2f);
  EXPECT_EQ(img[1], 0.5f);  // 1 - 0.5
  EXPECT_FLOAT_EQ(img[2], 0.2f);
  EXPECT_EQ(img[3], 0.0f);
}

// RandAugment's Solarize at level 0.1 inverts from 1 - 0.1 up (FixMatch: threshold 256 -
// magnitude, so a weak op inverts only the brightest pixels).
TEST(AugmentOps, RandAugmentSolarizeThresholdFallsWithTheLevel) {
  AugmentSpec s;
  s.channels = 1;
  s.out_h = 1;
  s.out_w = 3;
  std::vector<float> img = {0.2f, 0.5f, 0.95f}, tmp(3);
  OneWorker t;
  AugmentShared sh;
  kernels::apply_randaugment(t, s, kernels::kRaSolarize, 0.1f, img.data(), tmp.data(), sh);
  EXPECT_EQ(img[0], 0.2f);
  EXPECT_EQ(img[1], 0.5f);
  EXPECT_FLOAT_EQ(img[2], 0.05f);
}

TEST(AugmentOps, PosterizeKeepsTheTopBits) {
  std::vector<float> img = {level(200), level(255), level(15), level(16)};
  OneWorker t;
  kernels::apply_posterize(t, img.data(), 4, 4);
  EXPECT_EQ(img[0], level(192));
  EXPECT_EQ(img[1], level(240));
  EXPECT_EQ(img[2], level(0));
  EXPECT_EQ(img[3], level(16));
}

TEST(AugmentOps, GrayscaleUsesLumaOnEveryChannel) {
  // 1x2 RGB image: pure red and white.
  std::vector<float> img = {1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 1.0f};
  OneWorker t;
  kernels::to_grayscale(t, img.data(), 3, 2);
  for (int c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ(img[c * 2], 0.2989f);
    EXPECT_NEAR(img[c * 2 + 1], 0.9999f, 1e-6f);  // 0.2989 + 0.587 + 0.114
  }
}

TEST(AugmentOps, SaturationZeroIsGreyAndHueThirdTurnsRedIntoGreen) {
  std::vector<float> img = {0.8f, 0.4f, 0.2f};
  OneWorker t;
  kernels::adjust_saturation(t, img.data(), 3, 1, 0.0f);
  const float g = 0.2989f * 0.8f + 0.587f * 0.4f + 0.114f * 0.2f;
  for (float v : img) EXPECT_FLOAT_EQ(v, g);
  std::vector<float> red = {1.0f, 0.0f, 0.0f};
  kernels::adjust_hue(t, red.data(), 3, 1, 1.0f / 3.0f);
  EXPECT_NEAR(red[0], 0.0f, 1e-6f);
  EXPECT_NEAR(red[1], 1.0f, 1e-6f);
  EXPECT_NEAR(red[2], 0.0f, 1e-6f);
  std::vector<float> same = {0.3f, 0.6f, 0.9f};
  kernels::adjust_hue(t, same.data(), 3, 1, 0.0f);
  EXPECT_NEAR(same[0], 0.3f, 1e-6f);
  EXPECT_NEAR(same[1], 0.6f, 1e-6f);
  EXPECT_NEAR(same[2], 0.9f, 1e-6f);
}

TEST(AugmentOps, CutoutFillsTheBoxWithGrey) {
  std::vector<float> img(2 * 4 * 4, 0.1f);
  AugmentParams p = no_params();
  p.cut_y0 = 1;
  p.cut_y1 = 3;
  p.cut_x0 = 2;
  p.cut_x1 = 4;
  OneWorker t;
  kernels::apply_cutout(t, p, img.data(), 2, 4, 4);
  for (int c = 0; c < 2; ++c)
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) {
        const bool inside = y >= 1 && y < 3 && x >= 2;
        EXPECT_EQ(img[(c * 4 + y) * 4 + x], inside ? 0.5f : 0.1f) << c << "," << y << "," << x;
      }
}

TEST(AugmentOps, AutocontrastStretchesAndEqualizeFlattens) {
  OneWorker t;
  AugmentShared sh;
  // Levels 50, 100, 150 stretched to 0..255: (v - 50) * 255 / 100, truncated.
  std::vector<float> img = {level(50), level(100), level(150), level(100)};
  kernels::histogram_remap(t, img.data(), 1, 4, /*equalize=*/false, sh);
  EXPECT_EQ(img[0], level(0));
  EXPECT_EQ(img[1], level(127));
  EXPECT_EQ(img[2], level(255));
  // Equalize (PIL): histogram {10: 2, 20: 1, 30: 1}; step = (4 - 1) / 255 = 0 -> unchanged.
  std::vector<float> few = {level(10), level(10), level(20), level(30)};
  kernels::histogram_remap(t, few.data(), 1, 4, /*equalize=*/true, sh);
  EXPECT_EQ(few[0], level(10));
  EXPECT_EQ(few[3], level(30));
  // 512 pixels, half at 10 and half at 20: step = (512 - 256) / 255 = 1; lut[v] = 0 below
  // level 10, 256 (clamped to 255) above: 10 -> 0, 20 -> 255.
  std::vector<float> two(512);
  for (int i = 0; i < 512; ++i) two[i] = level(i % 2 ? 20 : 10);
  kernels::histogram_remap(t, two.data(), 1, 512, /*equalize=*/true, sh);
  EXPECT_EQ(two[0], level(0));
  EXPECT_EQ(two[1], level(255));
}

TEST(AugmentOps, GaussianBlurKeepsConstantsAndSpreadsAnImpulse) {
  OneWorker t;
  AugmentShared sh;
  std::vector<float> flat(5 * 5, 0.4f), tmp(25);
  kernels::gaussian_blur(t, flat.data(), tmp.data(), 1, 5, 5, 1.0f, 2, sh);
  for (float v : flat) EXPECT_NEAR(v, 0.4f, 1e-6f);
  // Impulse in the middle of 9x9 (far enough from the edges that no reflection reaches it):
  // the result is the outer product of the normalised taps.
  std::vector<float> dot(81, 0.0f), tmp9(81);
  dot[4 * 9 + 4] = 1.0f;
  kernels::gaussian_blur(t, dot.data(), tmp9.data(), 1, 9, 9, 1.0f, 2, sh);
  double w[5], total = 0;
  for (int k = 0; k < 5; ++k) total += (w[k] = std::exp(-(k - 2) * (k - 2) / 2.0));
  auto tap = [&](int d) { return d < -2 || d > 2 ? 0.0 : w[d + 2] / total; };
  for (int y = 0; y < 9; ++y)
    for (int x = 0; x < 9; ++x) EXPECT_NEAR(dot[y * 9 + x], tap(y - 4) * tap(x - 4), 1e-6) << y << "," << x;
  // At the border, reflect padding folds the taps back. A vertical line at column 1: x = 0
  // reads columns 2 1 0 1 2 (the line twice, offsets -1 and +1), x = 1 reads 1 0 1 2 3.
  std::vector<float> edge(81, 0.0f);
  for (int y = 0; y < 9; ++y) edge[y * 9 + 1] = 1.0f;
  kernels::gaussian_blur(t, edge.data(), tmp9.data(), 1, 9, 9, 1.0f, 2, sh);
  EXPECT_NEAR(edge[4 * 9 + 0], 2 * tap(1), 1e-6);
  EXPECT_NEAR(edge[4 * 9 + 1], tap(0) + tap(2), 1e-6);
  EXPECT_NEAR(edge[4 * 9 + 2], tap(1), 1e-6);
  EXPECT_NEAR(edge[4 * 9 + 3], tap(2), 1e-6);
}

TEST(AugmentOps, SharpnessOfAConstantImageIsTheImage) {
  OneWorker t;
  std::vector<float> img(4 * 4, 0.3f), tmp(16);
  img[5] = 0.9f;  // an interior bright pixel is softened towards its neighbours
  kernels::adjust_sharpness(t, img.data(), tmp.data(), 1, 4, 4, 0.0f);
  EXPECT_NEAR(img[5], (8 * 0.3f + 5 * 0.9f) / 13.0f, 1e-6f);
  EXPECT_EQ(img[0], 0.3f);  // borders keep their value
}

TEST(AugmentOps, AffineIdentityAndHalfTurn) {
  OneWorker t;
  std::vector<float> img = {0.1f, 0.2f, 0.3f, 0.4f}, tmp(4), orig = img;
  kernels::apply_affine(t, img.data(), tmp.data(), 1, 2, 2, 1, 0, 0, 1, 0, 0);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(img[i], orig[i]);
  kernels::apply_affine(t, img.data(), tmp.data(), 1, 2, 2, -1, 0, 0, -1, 0, 0);  // 180 degrees
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(img[i], orig[3 - i], 1e-6f);
  // Translate by a whole image: everything uncovered reads grey.
  kernels::apply_affine(t, img.data(), tmp.data(), 1, 2, 2, 1, 0, 0, 1, 2.0f, 0);
  for (float v : img) EXPECT_EQ(v, 0.5f);
}

// BYOL's crop resized bicubically as PIL does it (tests/oracles/bicubic_pil.py: PIL 9.4 in float
// mode, the crop cut out first as torchvision's resized_crop does): enlarged (filter support 2,
// taps past the crop's edge dropped and the rest renormalised) and shrunk (support widened by
// the scale: antialiasing). PIL's float path and this one round differently: 1e-5.
TEST(AugmentOps, BicubicCropMatchesPil) {
  const std::vector<float> kEnlarged = {
      0.01175497f,  0.471828685f, 1.00161211f,  1.04920798f,  0.678779572f, 0.332560311f, 0.304261211f, 0.53911067f,
      0.824897856f, 0.900367946f, 0.515267944f, 0.149223687f, 0.722187835f, 0.615224921f, 0.530029058f, 0.644480746f,
      0.305651676f, -0.0284829719f, 0.592903167f, 0.46962765f, 0.362816096f, 0.460059731f, 0.51686892f, 0.54014372f,
      0.459035776f, 0.364157493f, 0.285568148f, 0.366904405f, 0.681260472f, 0.938331634f};
  const std::vector<float> kShrunk = {0.306047058f, 0.495350108f, 0.709552002f, 0.387667847f,
                                      0.691527004f, 0.500668694f, 0.50010729f,  0.496622392f,
                                      0.715455837f, 0.461151542f, 0.480848185f, 0.791302789f};
  std::vector<uint8_t> src(6 * 7);
  for (int i = 0; i < 42; ++i) src[size_t(i)] = static_cast<uint8_t>((37 * i * i + 11 * i + 5) % 256);
  const auto resized = [&](int y0, int x0, int h, int w, int out_h, int out_w) {
    AugmentSpec s;
    s.recipe = kernels::kRecipeByol;
    s.channels = 1;
    s.in_h = 6;
    s.in_w = 7;
    s.out_h = out_h;
    s.out_w = out_w;
    s.crop_bicubic = 1;
    AugmentParams p = no_params();
    p.crop_y = y0, p.crop_x = x0, p.crop_h = h, p.crop_w = w;
    std::vector<float> img(size_t(out_h * out_w));
    OneWorker t;
    kernels::load_view(t, s, p, src.data(), img.data());
    return img;
  };
  const std::vector<float> enlarged = resized(1, 2, 3, 4, 5, 6), shrunk = resized(0, 0, 6, 7, 3, 4);
  for (size_t i = 0; i < kEnlarged.size(); ++i) EXPECT_NEAR(enlarged[i], kEnlarged[i], 1e-5f) << "enlarged " << i;
  for (size_t i = 0; i < kShrunk.size(); ++i) EXPECT_NEAR(shrunk[i], kShrunk[i], 1e-5f) << "shrunk " << i;
}

// RandAugment's geometric ops as FixMatch's TF code and its PyTorch port do them with PIL:
// nearest sampling (pixels move, never blend), whole-pixel translations (int(v * side)), and
// shears about the top-left corner.
TEST(AugmentOps, RandAugmentGeometryMovesWholePixelsLikePil) {
  AugmentSpec s;
  s.channels = 1;
  s.out_h = 4;
  s.out_w = 8;
  std::vector<float> src(32), img, tmp(32);
  for (int i = 0; i < 32; ++i) src[i] = level(i + 1);
  OneWorker t;
  AugmentShared sh;
  // TranslateX at level 0.5: 0.5 * 0.3 * 8 = 1.2 pixels -> 1; each row moves one column.
  img = src;
  kernels::apply_randaugment(t, s, kernels::kRaTranslateX, 0.5f, img.data(), tmp.data(), sh);
  for (int y = 0; y < 4; ++y) {
    EXPECT_EQ(img[y * 8], 0.5f) << y;  // uncovered: grey
    for (int x = 1; x < 8; ++x) EXPECT_EQ(img[y * 8 + x], src[y * 8 + x - 1]) << y << "," << x;
  }
  // ShearX at level 1 (k 0.3) about the top-left corner: row y reads x + 0.3 (y + 0.5),
  // rounded: rows 0 and 1 stay, rows 2 and 3 (0.75, 1.05) move by one column.
  img = src;
  kernels::apply_randaugment(t, s, kernels::kRaShearX, 1.0f, img.data(), tmp.data(), sh);
  for (int x = 0; x < 8; ++x) {
    EXPECT_EQ(img[x], src[x]) << x;
    EXPECT_EQ(img[8 + x], src[8 + x]) << x;
    for (int y = 2; y < 4; ++y) EXPECT_EQ(img[y * 8 + x], x < 7 ? src[y * 8 + x + 1] : 0.5f) << y << "," << x;
  }
  // Rotate: every output value is a source value or the grey fill, never a blend.
  img = src;
  kernels::apply_randaugment(t, s, kernels::kRaRotate, 0.37f, img.data(), tmp.data(), sh);
  int moved = 0;
  for (int i = 0; i < 32; ++i) {
    const bool from_source = std::find(src.begin(), src.end(), img[i]) != src.end();
    EXPECT_TRUE(from_source || img[i] == 0.5f) << i << ": " << img[i];
    moved += img[i] != src[i];
  }
  EXPECT_GT(moved, 0);
}

TEST(AugmentOps, OwnTranscendentalsMatchTheLibrary) {
  for (float x = -20.0f; x <= 5.0f; x += 0.37f)
    EXPECT_NEAR(kernels::ts_expf(x), std::exp(x), 2e-7 * std::exp(x)) << x;
  EXPECT_EQ(kernels::ts_expf(-100.0f), 0.0f);
  for (float x = -1.57f; x <= 1.57f; x += 0.01f) {
    EXPECT_NEAR(kernels::ts_sinf(x), std::sin(x), 2e-7) << x;
    EXPECT_NEAR(kernels::ts_cosf(x), std::cos(x), 2e-7) << x;
  }
}

}  // namespace
