// The recipes of data/augment.h turned into kernel specs, the checked call of the batched
// kernel (kernels/augment.h), and the loader Transform around it.
#include "data/augment.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "kernels/augment.h"

namespace tessera::data {

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

AugmentPipeline::AugmentPipeline(Recipe recipe, int channels, int height, int width, const std::vector<float>& mean,
                                 const std::vector<float>& std, const AugmentOptions& options)
    : recipe_(recipe), options_(options) {
  TS_CHECK(channels == 1 || channels == 3, "augmentation: expected 1 or 3 channels, found ", channels);
  TS_CHECK(mean.size() == static_cast<size_t>(channels) && std.size() == static_cast<size_t>(channels),
           "augmentation: expected ", channels, " means and stds, found ", mean.size(), " and ", std.size());
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
    s.mean[c] = mean[static_cast<size_t>(c)];
    s.std[c] = std[static_cast<size_t>(c)];
  }
  s.scale_lo = options.crop_scale_lo;
  s.crop_bicubic = options.crop_bicubic ? 1 : 0;
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
  if (!problem.empty())
    throw Error(cat("augmentation ", recipe_name(recipe), " on ", channels, "x", height, "x", width, " images: ", problem));
}

Shape AugmentPipeline::view_shape() const { return Shape{base_.channels, base_.out_h, base_.out_w}; }

kernels::AugmentSpec AugmentPipeline::spec(int view, uint64_t seed) const {
  TS_CHECK(view >= 0 && view < kernels::kAugmentMaxViews, "augmentation view must be in [0, ",
           kernels::kAugmentMaxViews, "), found ", view);
  kernels::AugmentSpec s = base_;
  s.view = view;
  s.seed = seed;
  const int v = view == 1 ? 1 : 0;  // BYOL's asymmetric probabilities
  s.blur_prob = options_.blur_prob[v];
  s.solarize_prob = options_.solarize_prob[v];
  return s;
}

void AugmentPipeline::run(Device device, const uint8_t* images, int64_t num_images, const int64_t* indices,
                          const int64_t* epochs, int64_t n, int view, uint64_t seed, float* out, float* scratch) const {
  const kernels::AugmentSpec s = spec(view, seed);
  if (n == 0) return;
  if (device == Device::CPU)  // a clear Error here; the kernels check too (kernels/augment.h)
    for (int64_t i = 0; i < n; ++i)
      TS_CHECK(indices[i] >= 0 && indices[i] < num_images, "augmentation: image index ", indices[i], " at ", i,
               ", expected in [0, ", num_images, ")");
  TS_DISPATCH(device, augment, images, num_images, indices, epochs, n, s, out, scratch);
}

AugmentTransform::AugmentTransform(Recipe recipe, const Dataset& d, Device device, const AugmentOptions& options)
    : pipeline_(recipe, d.channels, d.height, d.width, d.mean, d.std, options), device_(device), dataset_(&d) {
  if (device == Device::CUDA) {
    auto images = std::make_shared<OwnedTensor>(Device::CUDA, Shape{d.size, d.channels, d.height, d.width}, DType::U8);
    copy(images->t, d.images_view());
    device_images_ = std::move(images);
  }
}

AugmentTransform::AugmentTransform(Recipe recipe, const AugmentTransform& other, const AugmentOptions& options)
    : pipeline_(recipe, other.dataset_->channels, other.dataset_->height, other.dataset_->width,
                other.dataset_->mean, other.dataset_->std, options),
      device_(other.device_),
      dataset_(other.dataset_),
      device_images_(other.device_images_) {}

Shape AugmentTransform::view_shape(const Dataset& d) const {
  TS_CHECK(&d == dataset_, "augmentation ", recipe_name(pipeline_.recipe()), ": made for ", dataset_->name,
           ", asked about ", d.name);
  return pipeline_.view_shape();
}

void AugmentTransform::apply(const ViewRequest& r, const Tensor& out) {
  TS_CHECK(r.dataset == dataset_, "augmentation ", recipe_name(pipeline_.recipe()), ": made for ", dataset_->name,
           ", given a batch of ", r.dataset ? r.dataset->name : "no dataset");
  const Shape v = pipeline_.view_shape();
  const Shape want{r.count, v[0], v[1], v[2]};
  TS_CHECK(out.dtype == DType::F32 && out.device == device_ && out.shape == want, "augmentation ",
           recipe_name(pipeline_.recipe()), ": expected f32", want.str(), " on ", device_name(device_), ", found ",
           out.str());
  const size_t bytes = out.bytes();
  if (scratch_.bytes() < bytes) scratch_ = Buffer(device_, bytes);
  float* scratch = static_cast<float*>(scratch_.data());
  if (device_ == Device::CUDA) {
    TS_CHECK(r.indices_device && r.epochs_device, "augmentation on cuda: the request has no device indices");
    pipeline_.run(Device::CUDA, device_images_->t.u8(), dataset_->size, r.indices_device, r.epochs_device, r.count,
                  r.view, r.seed, out.f32(), scratch);
  } else {
    pipeline_.run(Device::CPU, dataset_->images.data(), dataset_->size, r.indices, r.epochs, r.count, r.view, r.seed,
                  out.f32(), scratch);
  }
}

}  // namespace tessera::data
