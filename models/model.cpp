#include "models/model.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "models/architectures.h"

namespace tessera {

// ---- spec ----------------------------------------------------------------------------------

std::string ModelSpec::problem() const {
  int depth = 0, widen = 0;
  const bool resnet = resnet_depth(arch) != 0;
  const bool wrn = parse_wrn(arch, &depth, &widen);
  if (!resnet && !wrn && arch != "mlp")
    return cat("arch '", arch, "' is not one of resnet18, resnet34, resnet50, wrn-<depth>-<k> (depth 6n+4), mlp");
  if (arch == "mlp") {
    if (mlp_sizes.size() != 3) return cat("mlp needs three sizes IN,HIDDEN,OUT, found ", mlp_sizes.size());
    for (int s : mlp_sizes)
      if (s < 1) return cat("mlp sizes must be positive, found ", s);
    if (num_classes != 0) return "an mlp head has no classifier (num_classes must be 0)";
    return "";
  }
  if (stem != "imagenet" && stem != "cifar") return cat("stem '", stem, "' is not imagenet or cifar");
  if (in_channels != 1 && in_channels != 3) return cat("in_channels must be 1 or 3, found ", in_channels);
  if (width < 1) return cat("width must be positive, found ", width);
  if (num_classes < 0) return cat("num_classes must be >= 0, found ", num_classes);
  return "";
}

nlohmann::json ModelSpec::to_json() const {
  return {{"arch", arch}, {"stem", stem},         {"in_channels", in_channels},
          {"width", width}, {"num_classes", num_classes}, {"mlp_sizes", mlp_sizes}};
}

ModelSpec ModelSpec::from_json(const nlohmann::json& j) {
  ModelSpec s;
  try {
    s.arch = j.at("arch").get<std::string>();
    s.stem = j.at("stem").get<std::string>();
    s.in_channels = j.at("in_channels").get<int>();
    s.width = j.at("width").get<int>();
    s.num_classes = j.at("num_classes").get<int>();
    s.mlp_sizes = j.at("mlp_sizes").get<std::vector<int>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("model description ", j.dump(), " is incomplete: ", e.what()));
  }
  return s;
}

// ---- registration ----------------------------------------------------------------------------

int Model::add_param(const std::string& name, Shape shape, ParamKind kind, Init init) {
  const int slot = param_table_.add(name, shape, kind);
  init_.push_back(init);
  return slot;
}

Conv Model::add_conv(const std::string& name, int in, int out, int kernel, int stride, int pad) {
  Conv c;
  c.weight = add_param(name + ".weight", Shape{out, in, kernel, kernel}, ParamKind::ConvWeight,
                       Init::KaimingNormalFanOut);
  c.stride = stride;
  c.pad = pad;
  return c;
}

BatchNorm Model::add_batch_norm(const std::string& name, int channels, float momentum) {
  BatchNorm bn;
  bn.weight = add_param(name + ".weight", Shape{channels}, ParamKind::BnWeight, Init::Ones);
  bn.bias = add_param(name + ".bias", Shape{channels}, ParamKind::BnBias, Init::Zeros);
  bn.running_mean = buffer_table_.add(name + ".running_mean", Shape{channels}, ParamKind::BnRunningMean);
  bn.running_var = buffer_table_.add(name + ".running_var", Shape{channels}, ParamKind::BnRunningVar);
  bn.num_batches = buffer_table_.add(name + ".num_batches_tracked", Shape{1}, ParamKind::BnNumBatches);
  bn.momentum = momentum;
  return bn;
}

Linear Model::add_linear(const std::string& name, int in, int out, Init weight_init, Init bias_init) {
  Linear l;
  l.weight = add_param(name + ".weight", Shape{out, in}, ParamKind::LinearWeight, weight_init);
  l.bias = add_param(name + ".bias", Shape{out}, ParamKind::Bias, bias_init);
  return l;
}

void Model::allocate(Device device) {
  params_ = Arena(param_table_, device);
  grads_ = Arena(param_table_, device);
  buffers_ = Arena(buffer_table_, device);
}

// ---- graph ---------------------------------------------------------------------------------

Var* Model::param(Graph& g, int slot) {
  const size_t i = static_cast<size_t>(slot);
  return g.param(params_.slot(i), grads_.slot(i), param_table_[i].name.c_str());
}

Var* Model::apply(Graph& g, const Conv& c, Var* x) {
  return ops::conv2d(g, x, param(g, c.weight), c.bias >= 0 ? param(g, c.bias) : nullptr, c.stride, c.pad);
}

namespace {

ops::BatchNormOptions bn_options(const BatchNorm& bn, bool train) {
  ops::BatchNormOptions opt;
  opt.train = train;
  opt.momentum = bn.momentum;
  return opt;
}

ops::BatchNormBuffers bn_buffers(Arena& buffers, const BatchNorm& bn) {
  ops::BatchNormBuffers buf;
  buf.running_mean = buffers.slot(static_cast<size_t>(bn.running_mean));
  buf.running_var = buffers.slot(static_cast<size_t>(bn.running_var));
  buf.num_batches = buffers.slot(static_cast<size_t>(bn.num_batches));
  return buf;
}

}  // namespace

Var* Model::apply(Graph& g, const BatchNorm& bn, Var* x, bool train) {
  const ops::BatchNormBuffers buf = bn_buffers(buffers_, bn);
  const ops::BatchNormOptions opt = bn_options(bn, train);
  Var* gamma = param(g, bn.weight);
  Var* beta = param(g, bn.bias);
  return x->value.shape.ndim == 4 ? ops::batch_norm2d(g, x, gamma, beta, buf, opt)
                                  : ops::batch_norm1d(g, x, gamma, beta, buf, opt);
}

Var* Model::apply(Graph& g, const Linear& l, Var* x) {
  return ops::linear(g, x, param(g, l.weight), l.bias >= 0 ? param(g, l.bias) : nullptr);
}

Var* Model::apply(Graph& g, const BatchNorm& bn, float slope, const Conv& c, Var* x, bool train) {
  if (!recompute_bn_relu_) return apply(g, c, ops::leaky_relu_(g, apply(g, bn, x, train), slope));
  Var* gamma = param(g, bn.weight);
  Var* beta = param(g, bn.bias);
  return ops::batch_norm_relu_conv2d(g, x, gamma, beta, bn_buffers(buffers_, bn), bn_options(bn, train), slope,
                                     param(g, c.weight), c.bias >= 0 ? param(g, c.bias) : nullptr, c.stride, c.pad);
}

Var* Model::classify(Graph& g, Var* f) { return has_fc_ ? apply(g, fc_, f) : f; }

Var* Model::forward(Graph& g, Var* x, bool train) { return classify(g, features(g, x, train)); }

// ---- initialisation --------------------------------------------------------------------------

namespace {

// Draws are a pure function of (seed, slot, element): slot i reads Philox subsequence
// (kStreamInit, i), so adding a layer never shifts another's weights, and element j uses the
// uniforms at offsets 2j, 2j + 1 (normal) or j (uniform), so chunks fill in parallel.
constexpr int64_t kInitChunk = 4096;  // elements; even, so normal pairs never straddle chunks

void fill_normal(float* p, int64_t n, double std, uint64_t seed, size_t slot) {
  const int64_t chunks = (n + kInitChunk - 1) / kInitChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kInitChunk, end = std::min(n, begin + kInitChunk);
    kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamInit, slot),
                             static_cast<uint64_t>(2 * begin));
    for (int64_t j = begin; j < end; j += 2) {
      // Box-Muller: two uniforms in (0, 1] give two independent normals; log(u1) is finite.
      const double u1 = rng.uniform(), u2 = rng.uniform();
      const double r = std * std::sqrt(-2.0 * std::log(u1));
      p[j] = static_cast<float>(r * std::cos(2.0 * M_PI * u2));
      if (j + 1 < end) p[j + 1] = static_cast<float>(r * std::sin(2.0 * M_PI * u2));
    }
  }
}

void fill_uniform(float* p, int64_t n, double bound, uint64_t seed, size_t slot) {
  const int64_t chunks = (n + kInitChunk - 1) / kInitChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kInitChunk, end = std::min(n, begin + kInitChunk);
    kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamInit, slot),
                             static_cast<uint64_t>(begin));
    for (int64_t j = begin; j < end; ++j) p[j] = static_cast<float>(bound * (2.0 * rng.uniform() - 1.0));
  }
}

}  // namespace

void Model::init(uint64_t seed) {
  std::vector<float> host(static_cast<size_t>(param_table_.arena_numel()), 0.0f);
  for (size_t i = 0; i < param_table_.size(); ++i) {
    const Slot& s = param_table_[i];
    // fan_in / fan_out as torch.nn.init computes them: dim 1 / dim 0 times the kernel area.
    // A bias takes the fan_in of the weight registered just before it, as nn.Linear does.
    const Slot& w = s.kind == ParamKind::Bias ? param_table_[i - 1] : s;
    const double area = w.shape.ndim == 4 ? static_cast<double>(w.shape[2] * w.shape[3]) : 1.0;
    const double fan_out = static_cast<double>(w.shape[0]) * area;
    const double fan_in = w.shape.ndim >= 2 ? static_cast<double>(w.shape[1]) * area : 1.0;
    float* p = host.data() + s.offset;
    switch (init_[i]) {
      case Init::KaimingNormalFanOut:  // gain sqrt(2): relu, and leaky_relu with torch's default a = 0
        fill_normal(p, s.numel, std::sqrt(2.0 / fan_out), seed, i);
        break;
      case Init::XavierNormal:
        fill_normal(p, s.numel, std::sqrt(2.0 / (fan_in + fan_out)), seed, i);
        break;
      case Init::TorchLinearDefault:  // kaiming_uniform(a = sqrt 5) reduces to this bound
        fill_uniform(p, s.numel, 1.0 / std::sqrt(fan_in), seed, i);
        break;
      case Init::Ones:
        std::fill(p, p + s.numel, 1.0f);
        break;
      case Init::Zeros:
        break;
    }
  }
  from_host(params_.all(), host);
  grads_.zero();

  std::vector<float> buf(static_cast<size_t>(buffer_table_.arena_numel()), 0.0f);
  for (const Slot& s : buffer_table_.slots())
    if (s.kind == ParamKind::BnRunningVar)
      for (int64_t j = 0; j < s.numel; ++j) buf[static_cast<size_t>(s.offset + j)] = 1.0f;
  from_host(buffers_.all(), buf);
}

// ---- factory -------------------------------------------------------------------------------

std::unique_ptr<Model> make_model(const ModelSpec& spec, Device device, bool initialise) {
  const std::string problem = spec.problem();
  if (!problem.empty()) throw Error(cat("cannot build model: ", problem));
  std::unique_ptr<Model> m;
  if (resnet_depth(spec.arch) != 0)
    m = build_resnet(spec);
  else if (spec.arch == "mlp")
    m = build_mlp_head(spec);
  else
    m = build_wide_resnet(spec);
  m->allocate(device);
  if (initialise) m->init(0);
  return m;
}

// ---- checkpoints -----------------------------------------------------------------------------

void add_model(SafetensorsWriter& w, const Model& m, const std::string& prefix) {
  add_arena(w, m.params(), prefix);
  add_arena(w, m.buffers(), prefix);
  w.add_metadata(prefix + "model", m.spec().to_json().dump());
}

ModelSpec model_spec_from(const SafetensorsFile& f, const std::string& prefix) {
  const std::string key = prefix + "model";
  if (!f.metadata().count(key))
    throw Error(cat("checkpoint '", f.path(), "' has no '", key, "' metadata saying which model it holds"));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f.metadata(key));
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("checkpoint '", f.path(), "': metadata '", key, "' is not JSON (", e.what(), ")"));
  }
  ModelSpec spec = ModelSpec::from_json(j);
  const std::string problem = spec.problem();
  if (!problem.empty()) throw Error(cat("checkpoint '", f.path(), "' describes a model that cannot be built: ", problem));
  return spec;
}

void load_model(const SafetensorsFile& f, Model& m, const std::string& prefix, bool allow_unexpected) {
  load_arenas(f, {&m.params(), &m.buffers()}, prefix, allow_unexpected);
  m.grads().zero();
}

std::unique_ptr<Model> load_model(const SafetensorsFile& f, Device device, const std::string& prefix,
                                  bool allow_unexpected) {
  std::unique_ptr<Model> m = make_model(model_spec_from(f, prefix), device, /*initialise=*/false);
  load_model(f, *m, prefix, allow_unexpected);
  return m;
}

}  // namespace tessera
