// build/embed: runs a checkpoint's backbone in eval mode (running BN statistics, no
// augmentation, inputs only normalised) over one split of a dataset and writes
//
//   features  F32 (N, D)   the pooled representation before the classifier
//   labels    I32 (N)
//   logits    F32 (N, K)   only when the checkpoint's model has a classifier
//
// to a safetensors file, for linear probes, kNN monitors and comparisons with PyTorch. The
// checkpoint's metadata says which architecture it holds, so no architecture flags are needed.
//
// Data: any `--data KIND[:PATH]` the dataset readers know (data/dataset.h), normalised with
// the dataset's per-channel mean and std, or `--data synthetic` (built in, below).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/dataset.h"
#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/blas_kernels.h"
#include "models/model.h"

namespace tessera {
namespace {

// Images as stored (uint8, N x C x H x W) with the per-channel mean / std that normalise them.
struct Images {
  int64_t n = 0;
  int c = 0, h = 0, w = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;
  std::vector<float> mean, std;  // in pixel / 255
};

// The synthetic dataset: 10 classes of oriented stripes (class k: frequency and direction
// from k) plus Philox noise, 32 x 32, 512 train / 128 test images; label i % 10. Pixels are a
// pure function of (split, image, position), so runs and devices agree.
Images synthetic(bool train, int channels) {
  Images d;
  d.n = train ? 512 : 128;
  d.c = channels;
  d.h = d.w = 32;
  d.pixels.resize(static_cast<size_t>(d.n * d.c * d.h * d.w));
  d.labels.resize(static_cast<size_t>(d.n));
  const size_t per_image = static_cast<size_t>(d.c * d.h * d.w);
  for (int64_t i = 0; i < d.n; ++i) {
    const int k = static_cast<int>(i % 10);
    d.labels[static_cast<size_t>(i)] = k;
    kernels::PhiloxState rng(0, kernels::philox_subsequence(kernels::kStreamTest, train ? 0 : 1), static_cast<uint64_t>(i) * per_image);
    for (size_t j = 0; j < per_image; ++j) {
      const int x = static_cast<int>(j % 32), y = static_cast<int>(j / 32 % 32);
      const double phase = (k < 5 ? x : y) * (k % 5 + 1) * 2.0 * M_PI / 32.0;
      const double v = 128.0 + 64.0 * std::sin(phase) + 96.0 * (rng.uniform() - 0.5);
      d.pixels[static_cast<size_t>(i) * per_image + j] = static_cast<uint8_t>(std::lround(std::fmin(255.0, std::fmax(0.0, v))));
    }
  }
  d.mean.assign(static_cast<size_t>(channels), 0.5f);
  d.std.assign(static_cast<size_t>(channels), 0.25f);
  return d;
}

// A split of a real dataset, checked against what the model takes.
Images from_reader(const std::string& spec, bool train, int channels, int image_size) {
  const data::DataSpec s = data::parse_data_spec(spec);
  data::DataOptions opt = data::data_options(s, image_size);
  opt.channels = channels;  // folder images are converted; fixed-format datasets are checked below
  data::Dataset d = data::load_dataset(s, train ? data::Split::Train : data::Split::Test, opt);
  // The test split is normalised as training normalised it (its statistics, for a folder).
  if (!train) data::match_training_split(data::load_dataset(s, data::Split::Train, opt), &d);
  if (d.channels != channels)
    throw Error(cat("the checkpoint's model takes ", channels, " input channels; ", d.name, " has ", d.channels));
  Images out;
  out.n = d.size;
  out.c = d.channels;
  out.h = d.height;
  out.w = d.width;
  out.pixels = std::move(d.images);
  out.labels = std::move(d.labels);
  out.mean = d.mean;
  out.std = d.std;
  return out;
}

int embed_main(int argc, char** argv) {
  std::string checkpoint, prefix, data = "fashion-mnist", split = "test", out, device_flag = "auto";
  int64_t limit = 0, batch = 256;
  int image_size = 0;
  Options o("embed",
            "Writes a backbone's pooled features (and labels, and logits when the model has a\n"
            "classifier) for one split of a dataset; eval mode, inputs only normalised.");
  o.add("checkpoint", &checkpoint, "a checkpoint written by init, byol or fixmatch").required();
  o.add("prefix", &prefix, "name prefix of the model inside the checkpoint: none for the teacher (key encoder); "
                           "student.backbone. (byol), student. (fixmatch), query.backbone. (moco)");
  o.add("data", &data, "fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | cifar100:DIR | stl10:DIR | folder:DIR | synthetic");
  o.choice("split", &split, {"train", "test"}, "the split to embed");
  o.add("out", &out, "the safetensors file to write").required();
  o.add("image-size", &image_size, "folder data: the side images are resized and centre-cropped to (0: 32)")
      .min(0)
      .max(1024);
  o.add("limit", &limit, "embed at most N images; 0 for all").min(0);
  o.choice("device", &device_flag, {"auto", "cpu", "cuda"}, "where to run: a GPU when present (auto), or the one named");
  o.add("batch-size", &batch, "images per forward pass").min(1);
  if (!o.parse(argc, argv)) return 0;
  // A bad spec or --image-size is a usage error, before any work.
  if (data != "synthetic") data::data_options(data::parse_data_spec(data), image_size);
  refuse_to_replace("out", out, {checkpoint, data == "synthetic" ? "" : data::data_root(data::parse_data_spec(data))});
  std::string note;
  const Device device = select_device(device_flag, &note);
  std::fprintf(stderr, "embed: %s\n", note.c_str());

  const SafetensorsFile ckpt = SafetensorsFile::read(checkpoint);
  // The checkpoint may hold more than this model (a teacher, optimizer state): only the
  // model's own tensors are checked.
  std::unique_ptr<Model> model = load_model(ckpt, device, prefix, /*allow_unexpected=*/true);
  const ModelSpec& spec = model->spec();
  if (spec.arch == "mlp") throw Error(cat("checkpoint '", ckpt.path(), "' holds an mlp head, not a backbone to embed images with"));

  Images d = data == "synthetic" ? synthetic(split == "train", spec.in_channels)
                                 : from_reader(data, split == "train", spec.in_channels, image_size);
  const int64_t n = limit > 0 ? std::min(limit, d.n) : d.n;
  const int64_t dim = model->feature_dim(), classes = spec.num_classes;
  std::vector<float> features(static_cast<size_t>(n * dim)), logits(static_cast<size_t>(n * classes));

  Workspace ws(device);
  Graph g(ws);
  const int64_t per_image = int64_t{d.c} * d.h * d.w, plane = int64_t{d.h} * d.w;
  batch = std::min(batch, std::max<int64_t>(n, 1));  // no buffer larger than the images
  std::vector<float> host(static_cast<size_t>(batch * per_image));
  for (int64_t begin = 0; begin < n; begin += batch) {
    const int64_t b = std::min(batch, n - begin);
    g.clear();
    ws.reset();
    NoGradScope no_grad(g);
    for (int64_t j = 0; j < b * per_image; ++j) {
      const size_t ch = static_cast<size_t>(j / plane % d.c);
      const float pixel = d.pixels[static_cast<size_t>(begin * per_image + j)] / 255.0f;
      host[static_cast<size_t>(j)] = (pixel - d.mean[ch]) / d.std[ch];
    }
    const Tensor x = ws.alloc(Shape{b, d.c, d.h, d.w});
    copy_from_host(x, host.data(), static_cast<size_t>(b * per_image) * sizeof(float));
    Var* feat = model->features(g, g.input(x, "images"), /*train=*/false);
    copy_to_host(features.data() + begin * dim, feat->value, static_cast<size_t>(b * dim) * sizeof(float));
    if (classes > 0) {
      Var* out = model->classify(g, feat);
      copy_to_host(logits.data() + begin * classes, out->value, static_cast<size_t>(b * classes) * sizeof(float));
    }
  }

  SafetensorsWriter w;
  w.add_f32("features", {n, dim}, features.data());
  w.add_i32("labels", {n}, std::vector<int32_t>(d.labels.begin(), d.labels.begin() + n));
  if (classes > 0) w.add_f32("logits", {n, classes}, logits.data());
  w.add_metadata("model", spec.to_json().dump());
  w.add_metadata("checkpoint", ckpt.path());
  w.add_metadata("data", data);
  w.add_metadata("split", split);
  w.write(out);
  std::printf("embed: %lld %s images of %s -> %s (features %lld x %lld%s)\n", static_cast<long long>(n), split.c_str(),
              data.c_str(), out.c_str(), static_cast<long long>(n), static_cast<long long>(dim),
              classes > 0 ? cat(", logits ", n, " x ", classes).c_str() : "");
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  return tessera::run_program("embed", [&] { return tessera::embed_main(argc, argv); });
}
