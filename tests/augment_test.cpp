// Augmentation pipelines end to end (data/augment.h over kernels/augment.h): deterministic
// recipes against hand-computed results, reproducibility of the Philox-keyed parameters,
// parameter ranges and rates, bad input, and CUDA against the CPU reference (tolerance 0:
// both backends run the same float operations without FMA contraction, see
// kernels/common/augment_ops.h; skipped with the reason where there is no GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "data/augment.h"
#include "data/loader.h"
#include "data/synthetic_images.h"
#include "data/transform.h"
#include "engine/check.h"
#include "kernels/augment.h"
#include "tests/op_case.h"

namespace {

using tessera::Buffer;
using tessera::Device;
using tessera::DType;
using tessera::OwnedTensor;
using tessera::Shape;
using tessera::data::AugmentOptions;
using tessera::data::AugmentPipeline;
using tessera::data::AugmentTransform;
using tessera::data::Recipe;
using tessera::data::recipe_name;
using tessera::data::synthetic_images;

const std::vector<float> kMean3 = {0.5f, 0.4f, 0.3f}, kStd3 = {0.25f, 0.2f, 0.3f};
const float* const kMean = kMean3.data();
const float* const kStd = kStd3.data();
std::vector<float> mean_of(int C) { return std::vector<float>(kMean3.begin(), kMean3.begin() + C); }
std::vector<float> std_of(int C) { return std::vector<float>(kStd3.begin(), kStd3.begin() + C); }

// int64 values on a device (there is no i64 tensor dtype; the bytes go through an i32 view).
Buffer upload_i64(Device device, const std::vector<int64_t>& v) {
  Buffer b(device, v.size() * 8 + 8);
  tessera::copy_from_host(b.view(Shape{static_cast<int64_t>(v.size()) * 2}, DType::I32), v.data(), v.size() * 8);
  return b;
}

// A loader's request for view `view` of d's images indices[i] in epochs[i]; with `device`
// buffers (CUDA transforms), their copies of the two lists on the GPU.
tessera::data::ViewRequest request(const tessera::data::Dataset& d, const std::vector<int64_t>& indices,
                                   const std::vector<int64_t>& epochs, uint64_t seed, int view,
                                   const Buffer* device_indices = nullptr, const Buffer* device_epochs = nullptr) {
  tessera::data::ViewRequest r;
  r.dataset = &d;
  r.count = static_cast<int64_t>(indices.size());
  r.indices = indices.data();
  r.epochs = epochs.data();
  if (device_indices) r.indices_device = static_cast<const int64_t*>(device_indices->data());
  if (device_epochs) r.epochs_device = static_cast<const int64_t*>(device_epochs->data());
  r.seed = seed;
  r.view = view;
  return r;
}

// Runs one view of a pipeline on `device` over images[indices[i]] (images: (M, C, H, W)),
// every sample drawn in `epoch`.
std::vector<float> run_view(const AugmentPipeline& p, Device device, const std::vector<uint8_t>& images, int C,
                            int H, int W, const std::vector<int64_t>& indices, int view, int64_t epoch,
                            uint64_t seed = 42) {
  const int64_t n = static_cast<int64_t>(indices.size()), m = static_cast<int64_t>(images.size()) / (C * H * W);
  OwnedTensor img(device, Shape{m, C, H, W}, DType::U8);
  tessera::copy_from_host(img.t, images.data(), images.size());
  const Buffer idx = upload_i64(device, indices), ep = upload_i64(device, std::vector<int64_t>(indices.size(), epoch));
  const Shape v = p.view_shape();
  OwnedTensor out(device, Shape{n, v[0], v[1], v[2]}), scratch(device, Shape{n, v[0], v[1], v[2]});
  p.run(device, img.t.u8(), m, static_cast<const int64_t*>(idx.data()), static_cast<const int64_t*>(ep.data()), n,
        view, seed, out.t.f32(), scratch.t.f32());
  return tessera::to_host_f32(out.t);
}

std::vector<int64_t> iota(int n, int start = 0) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + i;
  return v;
}

// A BYOL view with every random choice pinned through the spec: crop area and aspect ratio
// those of the whole image, never jittered / grey / blurred, always flipped and solarized.
TEST(Augment, PinnedByolViewIsFlippedSolarizedNormalised) {
  const int C = 3, H = 5, W = 4, n = 4;
  const std::vector<uint8_t> images = synthetic_images(n, C, H, W, 3);
  AugmentPipeline p(Recipe::Byol, C, H, W, mean_of(C), std_of(C));
  kernels::AugmentSpec s = p.spec(0, 1);
  s.scale_lo = s.scale_hi = 1.0f;
  s.log_ratio_lo = s.log_ratio_hi = std::log(0.8f);  // W / H
  s.flip_prob = 1.0f;
  s.jitter_prob = s.gray_prob = s.blur_prob = 0.0f;
  s.solarize_prob = 1.0f;
  const std::vector<int64_t> indices = iota(n), epochs(n, 0);
  std::vector<float> out(static_cast<size_t>(n * C * H * W)), scratch(out.size());
  kernels::cpu::augment(images.data(), n, indices.data(), epochs.data(), n, s, out.data(), scratch.data());
  for (int i = 0; i < n; ++i) {
    const kernels::AugmentParams prm = kernels::draw_augment_params(s, 0, i);
    ASSERT_EQ(prm.crop_h, H);
    ASSERT_EQ(prm.crop_w, W);
    for (int c = 0; c < C; ++c)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          const float v = images[((i * C + c) * H + y) * W + (W - 1 - x)] / 255.0f;
          const float want = ((v >= 0.5f ? 1.0f - v : v) - kMean[c]) / kStd[c];
          EXPECT_NEAR(out[((i * C + c) * H + y) * W + x], want, 1e-6f);
        }
  }
}

TEST(Augment, NormalizeIsPerChannelMeanAndStd) {
  for (int C : {1, 3}) {
    const std::vector<uint8_t> images = synthetic_images(3, C, 6, 7, 5);
    AugmentPipeline p(Recipe::Normalize, C, 6, 7, mean_of(C), std_of(C));
    const std::vector<float> out = run_view(p, Device::CPU, images, C, 6, 7, {2, 0}, 0, 0);
    const int plane = 6 * 7;
    for (int i = 0; i < 2; ++i)
      for (int c = 0; c < C; ++c)
        for (int q = 0; q < plane; ++q) {
          const int row = i == 0 ? 2 : 0;
          const float want = (images[(row * C + c) * plane + q] / 255.0f - kMean[c]) / kStd[c];
          ASSERT_NEAR(out[(i * C + c) * plane + q], want, 1e-6f);
        }
  }
}

TEST(Augment, SameKeyGivesTheSameViewAndOtherKeysDiffer) {
  const int C = 3, S = 16;
  const std::vector<uint8_t> images = synthetic_images(8, C, S, S, 11);
  for (Recipe r : {Recipe::Byol, Recipe::FixmatchWeak, Recipe::FixmatchStrong}) {
    AugmentPipeline p(r, C, S, S, mean_of(C), std_of(C));
    const std::vector<float> a = run_view(p, Device::CPU, images, C, S, S, iota(8), 0, 3);
    const std::vector<float> b = run_view(p, Device::CPU, images, C, S, S, iota(8), 0, 3);
    EXPECT_EQ(a, b) << recipe_name(r);
    // The same image in another batch position with the same key: the same view.
    const std::vector<float> moved = run_view(p, Device::CPU, images, C, S, S, {5}, 0, 3);
    const size_t one = static_cast<size_t>(C * S * S);
    EXPECT_TRUE(std::equal(moved.begin(), moved.end(), a.begin() + 5 * one)) << recipe_name(r);
    // Another epoch or another view: at least 6 of 8 images change (a weak view can repeat
    // by chance: 1 in 2 x 5 x 5 for a 16-pixel image with pad 2).
    for (int variant = 0; variant < 2; ++variant) {
      const std::vector<float> c = run_view(p, Device::CPU, images, C, S, S, iota(8), variant == 0 ? 1 : 0,
                                            variant == 0 ? 3 : 4);
      int changed = 0;
      for (int i = 0; i < 8; ++i)
        changed += !std::equal(c.begin() + i * one, c.begin() + (i + 1) * one, a.begin() + i * one);
      EXPECT_GE(changed, 6) << recipe_name(r) << " variant " << variant;
    }
  }
  // Different keys for the same pixels give different parameters.
  AugmentPipeline p(Recipe::Byol, C, S, S, mean_of(C), std_of(C));
  const kernels::AugmentSpec s = p.spec(0, 42);
  const kernels::AugmentParams x = kernels::draw_augment_params(s, 0, 1), y = kernels::draw_augment_params(s, 0, 2);
  EXPECT_TRUE(x.crop_h != y.crop_h || x.crop_w != y.crop_w || x.crop_y != y.crop_y || x.brightness != y.brightness);
}

// Parameter draws stay inside their ranges and Bernoulli rates sit inside 5 sigma.
TEST(Augment, ParameterRangesAndRates) {
  const int kDraws = 4000;
  AugmentPipeline byol(Recipe::Byol, 3, 32, 32, kMean3, kStd3);
  for (int view = 0; view < 2; ++view) {
    const kernels::AugmentSpec s = byol.spec(view, 9);
    int flips = 0, jitters = 0, grays = 0, blurs = 0, solarizes = 0;
    for (int i = 0; i < kDraws; ++i) {
      const kernels::AugmentParams p = kernels::draw_augment_params(s, 2, i);
      ASSERT_GE(p.crop_h, 1);
      ASSERT_GE(p.crop_w, 1);
      ASSERT_LE(p.crop_y + p.crop_h, 32);
      ASSERT_LE(p.crop_x + p.crop_w, 32);
      ASSERT_GE(p.crop_y, 0);
      ASSERT_GE(p.crop_x, 0);
      // Area and ratio inside the ranges, allowing the rounding of each side to whole pixels.
      const float area = static_cast<float>(p.crop_h * p.crop_w) / 1024.0f;
      const float ratio = static_cast<float>(p.crop_w) / static_cast<float>(p.crop_h);
      if (p.crop_h < 32 && p.crop_w < 32) {
        EXPECT_GT(area, 0.08f * 0.6f);
        EXPECT_GT(ratio, 0.75f * 0.6f);
        EXPECT_LT(ratio, 4.0f / 3.0f / 0.6f);
      }
      ASSERT_GE(p.brightness, 0.6f);
      ASSERT_LE(p.brightness, 1.4f);
      ASSERT_GE(p.contrast, 0.6f);
      ASSERT_LE(p.contrast, 1.4f);
      ASSERT_GE(p.saturation, 0.8f);
      ASSERT_LE(p.saturation, 1.2f);
      ASSERT_GE(p.hue, -0.1f);
      ASSERT_LE(p.hue, 0.1f);
      ASSERT_GE(p.sigma, 0.1f);
      ASSERT_LE(p.sigma, 2.0f);
      int seen = 0;
      for (int k = 0; k < 4; ++k) seen |= 1 << p.order[k];
      ASSERT_EQ(seen, 15);  // a permutation
      flips += p.flip;
      jitters += p.jitter;
      grays += p.gray;
      blurs += p.blur;
      solarizes += p.solarize;
    }
    auto rate_ok = [&](int count, float prob) {
      const double sd = std::sqrt(kDraws * prob * (1 - prob));
      return std::fabs(count - kDraws * prob) <= 5 * sd + 1e-9;
    };
    EXPECT_TRUE(rate_ok(flips, 0.5f)) << flips;
    EXPECT_TRUE(rate_ok(jitters, 0.8f)) << jitters;
    EXPECT_TRUE(rate_ok(grays, 0.2f)) << grays;
    EXPECT_TRUE(rate_ok(blurs, view == 0 ? 1.0f : 0.1f)) << blurs;
    EXPECT_TRUE(rate_ok(solarizes, view == 0 ? 0.0f : 0.2f)) << solarizes;
  }
  AugmentPipeline strong(Recipe::FixmatchStrong, 3, 32, 32, kMean3, kStd3);
  const kernels::AugmentSpec s = strong.spec(1, 9);
  EXPECT_EQ(s.pad, 4);
  int applied = 0, ops[kernels::kRaOpCount] = {}, shifts_y[9] = {}, shifts_x[9] = {};
  for (int i = 0; i < kDraws; ++i) {
    const kernels::AugmentParams p = kernels::draw_augment_params(s, 0, i);
    ASSERT_GE(p.shift_y, 0);
    ASSERT_LE(p.shift_y, 8);
    ASSERT_GE(p.shift_x, 0);
    ASSERT_LE(p.shift_x, 8);
    shifts_y[p.shift_y]++;
    shifts_x[p.shift_x]++;
    for (int k = 0; k < 2; ++k) {
      ASSERT_GE(p.ra_op[k], 0);
      ASSERT_LT(p.ra_op[k], kernels::kRaOpCount);
      ops[p.ra_op[k]]++;
      const float mag = std::fabs(p.ra_level[k]) * 10.0f;
      ASSERT_NEAR(mag, std::round(mag), 1e-5f);
      ASSERT_GE(std::round(mag), 1.0f);
      ASSERT_LE(std::round(mag), 10.0f);
      applied += p.ra_apply[k];
    }
    const int side_y = p.cut_y1 - p.cut_y0, side_x = p.cut_x1 - p.cut_x0;
    ASSERT_GE(side_y, 1);
    ASSERT_LE(side_y, 16);
    ASSERT_GE(side_x, 1);
    ASSERT_LE(side_x, 16);
  }
  const double sd = std::sqrt(2 * kDraws * 0.25);
  EXPECT_LE(std::fabs(applied - kDraws), 5 * sd);
  for (int op = 0; op < kernels::kRaOpCount; ++op) EXPECT_GT(ops[op], 2 * kDraws / 14 / 2) << "op " << op;
  // Every translation in [-pad, pad] is drawn, the extremes included (kDraws / 9 each expected).
  for (int v = 0; v <= 8; ++v) {
    EXPECT_GT(shifts_y[v], kDraws / 9 / 2) << "shift_y " << v;
    EXPECT_GT(shifts_x[v], kDraws / 9 / 2) << "shift_x " << v;
  }
}

// Every recipe on 1 and 3 channels: finite values inside the normalised [0, 1] range.
TEST(Augment, EveryRecipeStaysInRangeOnOneAndThreeChannels) {
  for (int C : {1, 3})
    for (Recipe r : {Recipe::Byol, Recipe::FixmatchWeak, Recipe::FixmatchStrong, Recipe::Normalize}) {
      const int S = 28;
      const std::vector<uint8_t> images = synthetic_images(16, C, S, S, 2);
      AugmentOptions o;
      o.out_size = 24;
      AugmentPipeline p(r, C, S, S, mean_of(C), std_of(C), o);
      const int out_side = r == Recipe::Byol ? 24 : S;
      const std::vector<float> out = run_view(p, Device::CPU, images, C, S, S, iota(16), 1, 0);
      ASSERT_EQ(out.size(), static_cast<size_t>(16 * C * out_side * out_side));
      const int plane = out_side * out_side;
      for (size_t i = 0; i < out.size(); ++i) {
        const int c = static_cast<int>(i / plane) % C;
        const float lo = (0.0f - kMean[c]) / kStd[c], hi = (1.0f - kMean[c]) / kStd[c];
        ASSERT_TRUE(std::isfinite(out[i]) && out[i] >= lo - 1e-5f && out[i] <= hi + 1e-5f)
            << recipe_name(r) << " C=" << C << " element " << i << " = " << out[i];
      }
    }
}

TEST(Augment, BadInputIsAClearError) {
  EXPECT_THROW(tessera::data::parse_recipe("simclr"), tessera::UsageError);
  EXPECT_EQ(tessera::data::parse_recipe("fixmatch-strong"), Recipe::FixmatchStrong);
  EXPECT_THROW(AugmentPipeline(Recipe::Byol, 2, 32, 32, {0, 0}, {1, 1}), tessera::Error);
  EXPECT_THROW(AugmentPipeline(Recipe::Byol, 3, 32, 32, {0}, {1}), tessera::Error);
  AugmentOptions o;
  o.blur_radius = 40;
  EXPECT_THROW(AugmentPipeline(Recipe::Byol, 3, 32, 32, kMean3, kStd3, o), tessera::Error);
  // An index outside the images.
  AugmentPipeline p(Recipe::FixmatchWeak, 1, 8, 8, mean_of(1), std_of(1));
  EXPECT_THROW(run_view(p, Device::CPU, std::vector<uint8_t>(4 * 64, 7), 1, 8, 8, {0, 4}, 0, 0), tessera::Error);
}

// The loader hook: a Transform over a dataset gives the pipeline's views for the request's
// indices, epochs, seed and view, and checks the output it is handed.
TEST(Augment, TransformFollowsTheRequest) {
  const tessera::data::Dataset d = tessera::data::synthetic_dataset(10, 3, 12, 12, 4);
  AugmentTransform t(Recipe::FixmatchStrong, d, Device::CPU);
  EXPECT_EQ(t.view_shape(d), (Shape{3, 12, 12}));
  const std::vector<int64_t> indices = {7, 2, 7}, epochs = {0, 0, 1};
  const tessera::data::ViewRequest r = request(d, indices, epochs, 5, 1);
  OwnedTensor out(Device::CPU, Shape{3, 3, 12, 12});
  t.apply(r, out.t);
  const std::vector<float> got = tessera::to_host_f32(out.t);
  const std::vector<float> want = run_view(t.pipeline(), Device::CPU, d.images, 3, 12, 12, {7, 2}, 1, 0, 5);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin()));
  // Image 7 in epoch 1 is a different view from image 7 in epoch 0.
  EXPECT_FALSE(std::equal(got.begin(), got.begin() + 432, got.begin() + 864));
  OwnedTensor wrong(Device::CPU, Shape{2, 3, 12, 12});
  EXPECT_THROW(t.apply(r, wrong.t), tessera::Error);
}

// Plugged into the loader: both BYOL views of a batch are the pipeline's views of the
// batch's indices in the batch's epochs with the loader's seed; one transform serves both.
TEST(Augment, ByolLoaderDeliversThePipelineViews) {
  const tessera::data::Dataset d = tessera::data::synthetic_dataset(24, 3, 16, 16, 8);
  AugmentOptions o;
  o.out_size = 12;
  AugmentTransform t(Recipe::Byol, d, Device::CPU, o);
  auto loader = tessera::data::make_byol_loader(d, 8, t, t, /*seed=*/77, Device::CPU);
  for (int step = 0; step < 4; ++step) {  // crosses an epoch boundary (3 batches per epoch)
    const tessera::data::Batch& b = loader->next();
    ASSERT_EQ(b.views.size(), 2u);
    ASSERT_EQ(b.views[0].shape, (Shape{8, 3, 12, 12}));
    for (int view = 0; view < 2; ++view) {
      const std::vector<float> got = tessera::to_host_f32(b.views[static_cast<size_t>(view)]);
      for (int i = 0; i < 8; ++i) {
        const std::vector<float> want = run_view(t.pipeline(), Device::CPU, d.images, 3, 16, 16, {b.indices[0][i]},
                                                 view, b.epochs[0][i], 77);
        ASSERT_TRUE(std::equal(want.begin(), want.end(), got.begin() + i * 432)) << "step " << step << " view " << view;
      }
    }
  }
}

// A transform made from another (FixMatch's strong view from its weak one) is its recipe's
// transform over the same dataset: the same views as one made on its own.
TEST(Augment, TransformMadeFromAnotherGivesItsOwnRecipesViews) {
  const tessera::data::Dataset d = tessera::data::synthetic_dataset(10, 3, 12, 12, 4);
  AugmentTransform weak(Recipe::FixmatchWeak, d, Device::CPU);
  AugmentTransform shared(Recipe::FixmatchStrong, weak), alone(Recipe::FixmatchStrong, d, Device::CPU);
  EXPECT_EQ(shared.view_shape(d), alone.view_shape(d));
  const std::vector<int64_t> indices = {7, 2, 9}, epochs = {0, 1, 1};
  const tessera::data::ViewRequest r = request(d, indices, epochs, 5, 1);
  OwnedTensor a(Device::CPU, Shape{3, 3, 12, 12}), b(Device::CPU, Shape{3, 3, 12, 12});
  shared.apply(r, a.t);
  alone.apply(r, b.t);
  EXPECT_EQ(tessera::to_host_f32(a.t), tessera::to_host_f32(b.t));
  weak.apply(r, b.t);
  EXPECT_NE(tessera::to_host_f32(a.t), tessera::to_host_f32(b.t));  // the recipe is the new one
}

// On CUDA the two share one device copy of the images, and the shared one's views are the
// CPU's.
TEST(AugmentCuda, TransformMadeFromAnotherSharesItsDeviceImages) {
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA comparison not run: " << reason;
  const tessera::data::Dataset d = tessera::data::synthetic_dataset(40, 3, 32, 32, 6);
  AugmentTransform weak(Recipe::FixmatchWeak, d, Device::CUDA);
  AugmentTransform strong(Recipe::FixmatchStrong, weak), cpu(Recipe::FixmatchStrong, d, Device::CPU);
  ASSERT_NE(weak.device_images(), nullptr);
  EXPECT_EQ(strong.device_images(), weak.device_images());
  const std::vector<int64_t> indices = {3, 39, 0}, epochs = {1, 1, 2};
  const Buffer idx = upload_i64(Device::CUDA, indices), ep = upload_i64(Device::CUDA, epochs);
  const tessera::data::ViewRequest q = request(d, indices, epochs, 3, 1, &idx, &ep);
  OwnedTensor a(Device::CPU, Shape{3, 3, 32, 32}), b(Device::CUDA, Shape{3, 3, 32, 32});
  cpu.apply(q, a.t);
  strong.apply(q, b.t);
  EXPECT_EQ(tessera::to_host_f32(a.t), tessera::to_host_f32(b.t));
}

// The CUDA transform (its own device copy of the dataset) against the CPU one.
TEST(AugmentCuda, TransformMatchesTheCpuTransform) {
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA comparison not run: " << reason;
  const tessera::data::Dataset d = tessera::data::synthetic_dataset(40, 3, 32, 32, 6);
  const std::vector<int64_t> indices = {3, 39, 0, 3, 17}, epochs = {1, 1, 1, 2, 2};
  const Buffer idx = upload_i64(Device::CUDA, indices), ep = upload_i64(Device::CUDA, epochs);
  for (Recipe r : {Recipe::Byol, Recipe::FixmatchStrong}) {
    AugmentTransform cpu(r, d, Device::CPU), gpu(r, d, Device::CUDA);
    const tessera::data::ViewRequest q = request(d, indices, epochs, 3, 1, &idx, &ep);
    OwnedTensor a(Device::CPU, Shape{5, 3, 32, 32}), b(Device::CUDA, Shape{5, 3, 32, 32});
    cpu.apply(q, a.t);
    gpu.apply(q, b.t);
    EXPECT_EQ(tessera::to_host_f32(a.t), tessera::to_host_f32(b.t)) << recipe_name(r);
  }
}

TEST(AugmentCuda, MatchesTheCpuExactly) {
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA comparison not run: " << reason;
  for (int C : {1, 3})
    for (Recipe r : {Recipe::Byol, Recipe::FixmatchWeak, Recipe::FixmatchStrong, Recipe::Normalize})
      for (int S : {32, 28}) {
        const int n = 64;
        const std::vector<uint8_t> images = synthetic_images(2 * n, C, S, S, 17);
        AugmentOptions o;
        o.out_size = S == 28 ? 24 : 0;
        o.crop_bicubic = S == 28;  // bilinear crops at 32, bicubic ones (enlarged and shrunk) at 28 -> 24
        o.blur_radius = 2;  // exercise more taps than the default 1
        AugmentPipeline p(r, C, S, S, mean_of(C), std_of(C), o);
        std::vector<int64_t> indices = iota(n, n / 2);
        indices[3] = indices[9];  // a repeated image
        for (int view = 0; view < 2; ++view) {
          const std::vector<float> cpu = run_view(p, Device::CPU, images, C, S, S, indices, view, 7);
          const std::vector<float> gpu = run_view(p, Device::CUDA, images, C, S, S, indices, view, 7);
          ASSERT_EQ(cpu.size(), gpu.size());
          size_t bad = 0, first = 0;
          for (size_t i = 0; i < cpu.size(); ++i)
            if (!(cpu[i] == gpu[i]) && bad++ == 0) first = i;
          EXPECT_EQ(bad, 0u) << recipe_name(r) << " C=" << C << " S=" << S << " view " << view
                             << ": first difference at " << first << " cpu " << cpu[first] << " cuda " << gpu[first];
        }
      }
}

}  // namespace
