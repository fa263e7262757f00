// The recipes of data/augment.h turned into kernel specs, and the checked call of the
// batched kernel (kernels/augment.h).
#include "data/augment.h"

#include <cmath>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "kernels/augment.h"

namespace tessera {

namespace {

struct RecipeName {
  Recipe recipe;
  const char* name;
};
constexpr RecipeName kRecipes[] = {
    {Recipe::Byol, "byol"},
    {Recipe::FixmatchWeak, "fixmatch-weak"},
    {Recipe::FixmatchStrong, "fixmatch-strong"},
    {Recipe::Normalize, "normalize"},
};

}  // namespace

Recipe parse_recipe(const std::string& name) {
  for (const RecipeName& r : kRecipes)
    if (name == r.name) return r.recipe;
  throw UsageError(cat("--recipe: expected byol, fixmatch-weak, fixmatch-strong or normalize, found '", name, "'"));
}

const char* recipe_name(Recipe r) {
  for (const RecipeName& n : kRecipes)
    if (n.recipe == r) return n.name;
  return "?";
}

AugmentPipeline::AugmentPipeline(Recipe recipe, int channels, int height, int width, const float* mean,
                                 const float* std, uint64_t seed, const AugmentOptions& options)
    : recipe_(recipe), options_(options) {
  TS_CHECK(channels == 1 || channels == 3, "augmentation: expected 1 or 3 channels, found ", channels);
  kernels::AugmentSpec& s = base_;
  switch (recipe) {
    case Recipe::Normalize: s.recipe = kernels::kRecipeNormalize; break;
    case Recipe::Byol: s.recipe = kernels::kRecipeByol; break;
    case Recipe::FixmatchWeak: s.recipe = kernels::kRecipeFixmatchWeak; break;
    case Recipe::FixmatchStrong: s.recipe = kernels::kRecipeFixmatchStrong; break;
  }
  s.channels = channels;
  s.in_h = s.out_h = height;
  s.in_w = s.out_w = width;
  if (recipe == Recipe::Byol && options.out_size > 0) s.out_h = s.out_w = options.out_size;
  for (int c = 0; c < channels; ++c) {
    s.mean[c] = mean[c];
    s.std[c] = std[c];
  }
  s.seed = seed;
  s.scale_lo = options.crop_scale_lo;
  s.log_ratio_lo = std::log(3.0f / 4.0f);
  s.log_ratio_hi = std::log(4.0f / 3.0f);
  s.jitter_prob = options.jitter_prob;
  s.gray_prob = channels == 3 ? options.gray_prob : 0.0f;
  const int side = std::min(s.out_h, s.out_w);
  s.blur_radius = options.blur_radius >= 0 ? options.blur_radius
                                           : std::min(kernels::kAugmentMaxBlurRadius, std::max(1, side / 10 / 2));
  s.pad = static_cast<int>(std::lround(options.translate * static_cast<float>(std::min(height, width))));
  s.ra_ops = options.randaugment_ops;
  s.cutout_frac = options.cutout_frac;
  const std::string problem = kernels::augment_spec_problem(s);
  if (!problem.empty()) throw Error(cat("augmentation ", recipe_name(recipe), " on ", channels, "x", height, "x", width,
                                        " images: ", problem));
}

Shape AugmentPipeline::output_shape(int64_t n) const { return Shape{n, base_.channels, base_.out_h, base_.out_w}; }

kernels::AugmentSpec AugmentPipeline::spec(int view, uint64_t epoch) const {
  TS_CHECK(view >= 0 && view < kernels::kAugmentMaxViews, "augmentation view must be in [0, ",
           kernels::kAugmentMaxViews, "), found ", view);
  kernels::AugmentSpec s = base_;
  s.view = view;
  s.epoch = epoch;
  const int v = view == 1 ? 1 : 0;  // BYOL's asymmetric probabilities
  s.blur_prob = options_.blur_prob[v];
  s.solarize_prob = options_.solarize_prob[v];
  return s;
}

void AugmentPipeline::run(int view, uint64_t epoch, const Tensor& images, const Tensor& rows, const Tensor& keys,
                          const Tensor& out, Workspace& ws) const {
  const kernels::AugmentSpec s = spec(view, epoch);
  TS_CHECK(images.dtype == DType::U8 && images.shape.ndim == 4 && images.shape[1] == s.channels &&
               images.shape[2] == s.in_h && images.shape[3] == s.in_w,
           "augmentation ", recipe_name(recipe_), ": expected u8 images (M, ", s.channels, ", ", s.in_h, ", ", s.in_w,
           "), found ", images.str());
  TS_CHECK(keys.dtype == DType::I32 && keys.shape.ndim == 1, "augmentation keys: expected i32 (n), found ", keys.str());
  const int64_t n = keys.numel();
  TS_CHECK(out.dtype == DType::F32 && out.shape == output_shape(n), "augmentation output: expected f32 ",
           output_shape(n).str(), ", found ", out.str());
  check_same_device("augmentation keys", keys, images);
  check_same_device("augmentation output", out, images);
  TS_CHECK(ws.device() == images.device, "augmentation: workspace on ", device_name(ws.device()), ", images on ",
           device_name(images.device));
  const int32_t* row_ptr = nullptr;
  if (rows.defined()) {
    TS_CHECK(rows.dtype == DType::I32 && rows.numel() == n, "augmentation rows: expected i32 (", n, "), found ",
             rows.str());
    check_same_device("augmentation rows", rows, images);
    row_ptr = rows.i32();
    if (rows.device == Device::CPU)  // on CUDA the loader's indices are trusted (checked when drawn)
      for (int64_t i = 0; i < n; ++i)
        TS_CHECK(row_ptr[i] >= 0 && row_ptr[i] < images.shape[0], "augmentation rows[", i, "] = ", row_ptr[i],
                 ", expected in [0, ", images.shape[0], ")");
  } else {
    TS_CHECK(images.shape[0] >= n, "augmentation: ", n, " keys but only ", images.shape[0], " images");
  }
  Tensor scratch = ws.alloc(out.shape);
  TS_DISPATCH(out.device, augment, images.u8(), row_ptr, keys.i32(), n, s, out.f32(), scratch.f32());
}

}  // namespace tessera
