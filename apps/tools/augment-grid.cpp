// augment-grid: a PNG of original images beside their augmented views, so a person can see
// what the network is fed.
//
//   build/augment-grid --data KIND[:PATH] --recipe byol|fixmatch-weak|fixmatch-strong|normalize
//                      --out grid.png [--n 16] [--columns 4] [--seed S] [--device auto|cpu|cuda]
//                      [--split train|test|unlabeled] [--size 32] [--channels 3] [--out-size 0]
//
// One row per image (spread evenly over the split): the original, a gap, then `columns`
// views. BYOL columns alternate view 0 / view 1 (epochs 0, 0, 1, 1, ...); the other recipes
// show their view at epochs 0, 1, 2, ... Views are de-normalised with the dataset's mean / std
// and every cell is upscaled (nearest) so small images are visible. --data synthetic[:N]
// generates N (default 64) images of --size and --channels (data/synthetic_images.h).
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/synthetic_images.h"
#include "engine/check.h"
#include "engine/device.h"
#include "kernels/cpu/blas_kernels.h"

namespace tessera {
namespace {

struct Flags {
  std::string data = "fashion-mnist", recipe = "byol", out, device = "auto", split = "train";
  int n = 16, columns = 4, size = 32, channels = 3, out_size = 0;
  int64_t seed = 0;
};

// Parses N of `--data synthetic:N`.
int to_int(const std::string& flag, const std::string& v, int lo, int hi) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > hi)
    throw UsageError(cat(flag, ": expected an integer in [", lo, ", ", hi, "], found '", v, "'"));
  return static_cast<int>(x);
}

data::Dataset load(const Flags& f) {
  if (f.data == "synthetic" || f.data.rfind("synthetic:", 0) == 0) {
    const int count = f.data == "synthetic" ? 64 : to_int("--data synthetic:N", f.data.substr(10), 1, 100000);
    return data::synthetic_dataset(count, f.channels, f.size, f.size, static_cast<uint64_t>(f.seed));
  }
  data::Split split = data::Split::Train;
  if (f.split == "test") split = data::Split::Test;
  else if (f.split == "unlabeled") split = data::Split::Unlabeled;
  data::DataOptions options;
  options.image_size = f.size;
  options.channels = f.channels;
  return data::load_dataset(data::parse_data_spec(f.data), split, options);
}

// An RGB canvas; cells are drawn with nearest-neighbour upscaling.
struct Canvas {
  int width, height;
  std::vector<uint8_t> rgb;
  Canvas(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3, 70) {}
  // Pixel values in [0, 1] (planar C x h x w, C = 1 or 3) at (top, left), `scale` x bigger.
  void draw(const std::vector<float>& planes, int C, int h, int w, int top, int left, int scale) {
    for (int y = 0; y < h * scale; ++y)
      for (int x = 0; x < w * scale; ++x)
        for (int k = 0; k < 3; ++k) {
          const float v = planes[static_cast<size_t>((C == 3 ? k : 0) * h * w + (y / scale) * w + x / scale)];
          rgb[(static_cast<size_t>(top + y) * width + left + x) * 3 + k] =
              static_cast<uint8_t>(std::lround(std::min(1.0f, std::max(0.0f, v)) * 255.0f));
        }
  }
};

int augment_grid_main(int argc, char** argv) {
  Flags f;
  Options o("augment-grid",
            "A PNG of original images beside their augmented views (one row per image, spread evenly\n"
            "over the split: the original, a gap, then --columns views).");
  o.add("data", &f.data, "KIND[:PATH]: fashion-mnist, mnist, cifar10, cifar100, stl10, folder, or synthetic[:N] (generated)");
  o.choice("recipe", &f.recipe, {"byol", "fixmatch-weak", "fixmatch-strong", "normalize"}, "the augmentation to show");
  o.add("out", &f.out, "the PNG to write").required();
  o.add("n", &f.n, "images (rows)").min(1).max(256);
  o.add("columns", &f.columns, "views per image").min(1).max(16);
  o.add("seed", &f.seed, "seed of the augmentation (and of synthetic images)").min(0).max(0x7FFFFFFF);
  o.choice("device", &f.device, {"auto", "cpu", "cuda"}, "where to augment: a GPU when present (auto), or the one named");
  o.choice("split", &f.split, {"train", "test", "unlabeled"}, "the split to draw images from (not synthetic)");
  o.add("size", &f.size, "image side (synthetic, folder)").min(8).max(512);
  o.add("channels", &f.channels, "image channels (synthetic, folder)").min(1).max(3);
  o.add("out-size", &f.out_size, "byol crop size; 0: the image size").min(0).max(512);
  if (!o.parse(argc, argv)) return 0;
  if (f.channels == 2) throw UsageError("--channels: expected 1 (grey) or 3 (RGB), found 2");
  if (f.out_size == 1) throw UsageError("--out-size: expected 0 (the image size) or a side of at least 2, found 1");
  const bool synthetic = f.data == "synthetic" || f.data.rfind("synthetic:", 0) == 0;
  refuse_to_replace("out", f.out, {synthetic ? "" : data::data_root(data::parse_data_spec(f.data))});
  const data::Recipe recipe = data::parse_recipe(f.recipe);
  std::string note;
  const Device dev = select_device(f.device, &note);
  std::printf("%s\n", note.c_str());
  const data::Dataset d = load(f);
  data::AugmentOptions options;
  options.out_size = f.out_size;
  data::AugmentTransform transform(recipe, d, dev, options);
  const Shape vs = transform.view_shape(d);
  const int C = d.channels, H = d.height, W = d.width, OH = static_cast<int>(vs[1]), OW = static_cast<int>(vs[2]);

  const int n = static_cast<int>(std::min<int64_t>(f.n, d.size));
  std::vector<int64_t> indices(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) indices[static_cast<size_t>(i)] = i * d.size / n;

  // The views, column by column, each a batch of the n images through the loader's hook.
  const int side = std::max({H, W, OH, OW});
  const int scale = std::max(1, (96 + side - 1) / side);
  const int cell = side * scale, gap = 4, split_gap = 16;
  Canvas canvas(gap + cell + split_gap + f.columns * (cell + gap), gap + n * (cell + gap));
  const int64_t plane = int64_t{H} * W;
  for (int i = 0; i < n; ++i) {
    std::vector<float> original(static_cast<size_t>(C * plane));
    const uint8_t* px = d.image(indices[static_cast<size_t>(i)]);
    for (int64_t k = 0; k < C * plane; ++k) original[static_cast<size_t>(k)] = px[k] / 255.0f;
    canvas.draw(original, C, H, W, gap + i * (cell + gap) + (cell - H * scale) / 2, gap + (cell - W * scale) / 2,
                scale);
  }
  OwnedTensor out(dev, Shape{n, C, OH, OW});
  Buffer keys(dev, static_cast<size_t>(2 * n) * 8);
  for (int col = 0; col < f.columns; ++col) {
    const bool byol = recipe == data::Recipe::Byol;
    const int view = byol ? col % 2 : (recipe == data::Recipe::FixmatchStrong ? 1 : 0);
    const int64_t epoch = byol ? col / 2 : col;
    std::vector<int64_t> host_keys = indices;
    host_keys.resize(static_cast<size_t>(2 * n), epoch);
    copy_from_host(keys.view(Shape{4 * int64_t{n}}, DType::I32), host_keys.data(), host_keys.size() * 8);
    data::ViewRequest r;
    r.dataset = &d;
    r.count = n;
    r.indices = host_keys.data();
    r.epochs = host_keys.data() + n;
    r.indices_device = static_cast<const int64_t*>(keys.data());
    r.epochs_device = r.indices_device + n;
    r.seed = static_cast<uint64_t>(f.seed);
    r.view = view;
    transform.apply(r, out.t);
    std::vector<float> views = to_host_f32(out.t);
    for (int i = 0; i < n; ++i) {
      std::vector<float> img(views.begin() + int64_t{i} * C * OH * OW, views.begin() + int64_t{i + 1} * C * OH * OW);
      for (int c = 0; c < C; ++c)
        for (int64_t k = 0; k < int64_t{OH} * OW; ++k) {
          float& v = img[static_cast<size_t>(c * OH * OW + k)];
          v = v * d.std[static_cast<size_t>(c)] + d.mean[static_cast<size_t>(c)];
        }
      canvas.draw(img, C, OH, OW, gap + i * (cell + gap) + (cell - OH * scale) / 2,
                  gap + cell + split_gap + col * (cell + gap) + (cell - OW * scale) / 2, scale);
    }
  }
  // Encoded in memory, then written whole (temporary file, fsync, rename): a full disk leaves
  // the old PNG, not half a new one.
  std::string png;
  auto append = [](void* to, void* bytes, int size) {
    static_cast<std::string*>(to)->append(static_cast<char*>(bytes), static_cast<size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &png, canvas.width, canvas.height, 3, canvas.rgb.data(), canvas.width * 3))
    throw Error(cat(f.out, ": stb_image_write could not encode the PNG"));
  write_file_atomic(f.out, png);
  std::printf("%s: %d images of %s (%dx%dx%d) through %s, %d views each, %dx upscaled: %dx%d pixels\n", f.out.c_str(),
              n, d.name.c_str(), C, H, W, data::recipe_name(recipe), f.columns, scale, canvas.width, canvas.height);
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  return tessera::run_program("augment-grid", [&] { return tessera::augment_grid_main(argc, argv); });
}
