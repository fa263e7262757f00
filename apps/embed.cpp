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
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "kernels/cpu/blas_kernels.h"

namespace tessera {
namespace {

const char* kHelp =
    "usage: embed --checkpoint FILE --out FILE.safetensors [flags]\n"
    "Writes a backbone's pooled features (and labels, and logits when the model has a\n"
    "classifier) for one split of a dataset; eval mode, inputs only normalised.\n"
    "  --checkpoint FILE    a checkpoint written by init, byol or fixmatch (required)\n"
    "  --prefix P           name prefix of the model inside the checkpoint, e.g. teacher. (default none)\n"
    "  --data SPEC          fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | cifar100:DIR | stl10:DIR |\n"
    "                       folder:DIR | synthetic (default fashion-mnist)\n"
    "  --split S            train | test (default test)\n"
    "  --out FILE           the safetensors file to write (required)\n"
    "  --limit N            embed at most N images; 0 for all (default 0)\n"
    "  --device D           auto | cpu | cuda (default auto)\n"
    "  --batch-size B       images per forward pass (default 256)\n";

struct Flags {
  std::map<std::string, std::string> values;
  bool has(const std::string& k) const { return values.count(k) != 0; }
  std::string get(const std::string& k, const std::string& fallback) const {
    return has(k) ? values.at(k) : fallback;
  }
};

// GNU long flags: --name value or --name=value; every flag takes a value.
Flags parse(int argc, char** argv, std::initializer_list<const char*> known) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      f.values["help"] = "";
      return f;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(cat("unexpected argument '", a, "'"));
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) throw UsageError(cat("--", name, ": missing value"));
      value = argv[++i];
    }
    bool ok = false;
    for (const char* k : known) ok = ok || name == k;
    if (!ok) throw UsageError(cat("unknown flag --", name));
    f.values[name] = value;
  }
  return f;
}

int64_t to_int(const Flags& f, const std::string& name, int64_t fallback, int64_t min) {
  if (!f.has(name)) return fallback;
  const std::string& v = f.values.at(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < min)
    throw UsageError(cat("--", name, ": expected an integer >= ", min, ", found '", v, "'"));
  return x;
}

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
Images from_reader(const std::string& spec, bool train, int channels) {
  data::DataOptions opt;
  opt.channels = channels;  // folder images are converted; fixed-format datasets are checked below
  data::Dataset d = data::load_dataset(data::parse_data_spec(spec), train ? data::Split::Train : data::Split::Test, opt);
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

int run(int argc, char** argv) {
  const Flags f = parse(argc, argv, {"checkpoint", "prefix", "data", "split", "out", "limit", "device", "batch-size"});
  if (f.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!f.has("checkpoint")) throw UsageError("--checkpoint: required");
  if (!f.has("out")) throw UsageError("--out: required (the safetensors file to write)");
  const std::string split = f.get("split", "test");
  if (split != "train" && split != "test") throw UsageError(cat("--split: expected train or test, found '", split, "'"));
  const std::string data = f.get("data", "fashion-mnist");
  if (data != "synthetic") data::parse_data_spec(data);  // a bad spec is a usage error, before any work
  const int64_t limit = to_int(f, "limit", 0, 0);
  const int64_t batch = to_int(f, "batch-size", 256, 1);
  const std::string prefix = f.get("prefix", "");
  std::string note;
  const Device device = select_device(f.get("device", "auto"), &note);
  std::fprintf(stderr, "embed: %s\n", note.c_str());

  const SafetensorsFile ckpt = SafetensorsFile::read(f.values.at("checkpoint"));
  // The checkpoint may hold more than this model (a teacher, optimizer state): only the
  // model's own tensors are checked.
  std::unique_ptr<Model> model = load_model(ckpt, device, prefix, /*allow_unexpected=*/true);
  const ModelSpec& spec = model->spec();
  if (spec.arch == "mlp") throw Error(cat("checkpoint '", ckpt.path(), "' holds an mlp head, not a backbone to embed images with"));

  Images d = data == "synthetic" ? synthetic(split == "train", spec.in_channels)
                                 : from_reader(data, split == "train", spec.in_channels);
  const int64_t n = limit > 0 ? std::min(limit, d.n) : d.n;
  const int64_t dim = model->feature_dim(), classes = spec.num_classes;
  std::vector<float> features(static_cast<size_t>(n * dim)), logits(static_cast<size_t>(n * classes));

  Workspace ws(device);
  Graph g(ws);
  const int64_t per_image = int64_t{d.c} * d.h * d.w, plane = int64_t{d.h} * d.w;
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
  const std::string out = f.values.at("out");
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
  try {
    return tessera::run(argc, argv);
  } catch (const tessera::UsageError& e) {
    std::fprintf(stderr, "embed: %s (see embed --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embed: %s\n", e.what());
    return 1;
  }
}
