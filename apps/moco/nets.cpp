#include "apps/moco/nets.h"

#include <cmath>
#include <string>
#include <vector>

#include "engine/check.h"
#include "kernels/common/philox.h"

namespace tessera::moco {

uint64_t part_seed(uint64_t seed, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (uint64_t{3} << 40) + part), 0);
  const uint64_t hi = s.next_u32();
  return (hi << 32) | s.next_u32();
}

namespace {

ModelSpec backbone_spec(const Config& c, int in_channels) {
  ModelSpec s;
  s.arch = c.arch;
  s.stem = c.stem;
  s.in_channels = in_channels;
  s.width = c.width;
  return s;
}

// The 2-layer head. models/mlp_head.cpp puts BatchNorm1d between the layers (BYOL's
// projector); MoCo v2's head has none. Kept: with split BN in the key encoder the extra BN
// cannot carry the batch signature shuffle BN guards against (docs/moco.md).
ModelSpec head_spec(int in, int hidden, int out) {
  ModelSpec s;
  s.arch = "mlp";
  s.mlp_sizes = {in, hidden, out};
  return s;
}

OptimizerConfig optimizer_config(const Config& c) {
  OptimizerConfig o;
  o.kind = OptimizerKind::Sgd;
  o.weight_decay = static_cast<float>(c.weight_decay);
  o.momentum = static_cast<float>(c.sgd_momentum);
  o.exclude_bias_and_norm = false;  // MoCo decays every parameter
  return o;
}

// K rows of D standard normal draws (Box-Muller on Philox), each row L2-normalised: random
// directions, as MoCo's randn queue normalised along the feature dimension.
std::vector<float> random_unit_rows(int64_t k, int64_t d, uint64_t seed) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, 0), 0);
  auto uniform = [&s] { return (static_cast<double>(s.next_u32()) + 1.0) / 4294967296.0; };  // (0, 1]
  std::vector<float> v(static_cast<size_t>(k * d));
  for (int64_t i = 0; i < k; ++i) {
    double norm = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double x = std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * M_PI * uniform());
      v[static_cast<size_t>(i * d + c)] = static_cast<float>(x);
      norm += x * x;
    }
    const double inv = 1.0 / std::sqrt(std::max(norm, 1e-24));
    for (int64_t c = 0; c < d; ++c) v[static_cast<size_t>(i * d + c)] *= static_cast<float>(inv);
  }
  return v;
}

}  // namespace

Nets build_nets(const Config& c, int in_channels, Device device, int64_t total_steps) {
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);
  Nets n;
  n.backbone = make_model(backbone_spec(c, in_channels), device);
  n.backbone->init(part_seed(seed, kBackbone));
  const int d = n.backbone->feature_dim();
  n.head = make_model(head_spec(d, c.head_hidden > 0 ? c.head_hidden : d, c.head_dim), device);
  n.head->init(part_seed(seed, kHead));
  n.k_backbone = make_model(n.backbone->spec(), device);
  n.k_head = make_model(n.head->spec(), device);
  n.smooth_backbone = std::make_unique<TeacherSmoother>(n.backbone->param_table(), n.backbone->buffer_table(), device,
                                                        c.teacher.config(total_steps, part_seed(seed, kKeyBackbone)));
  n.smooth_head = std::make_unique<TeacherSmoother>(n.head->param_table(), n.head->buffer_table(), device,
                                                    c.teacher.config(total_steps, part_seed(seed, kKeyHead)));
  n.smooth_backbone->initialise(n.backbone->params(), n.k_backbone->params(), n.backbone->buffers(),
                                n.k_backbone->buffers());
  n.smooth_head->initialise(n.head->params(), n.k_head->params(), n.head->buffers(), n.k_head->buffers());
  const OptimizerConfig oc = optimizer_config(c);
  n.opt_backbone = std::make_unique<Optimizer>(n.backbone->param_table(), device, oc);
  n.opt_head = std::make_unique<Optimizer>(n.head->param_table(), device, oc);
  n.queue.keys = std::make_unique<OwnedTensor>(device, Shape{c.queue, c.head_dim});
  from_host(n.queue.keys->t, random_unit_rows(c.queue, c.head_dim, part_seed(seed, kQueue)));
  n.queue.ptr = std::make_unique<OwnedTensor>(device, Shape{1}, DType::I32);
  from_host(n.queue.ptr->t, std::vector<int32_t>{0});
  n.shuffle_seed = part_seed(seed, kKeyShuffle);
  return n;
}

int64_t KeyQueue::read_ptr() const {
  int32_t v = 0;
  copy_to_host(&v, ptr->t, sizeof v);
  return v;
}

namespace {
NamedArenas arenas(Nets& n, bool buffers) {
  NamedArenas out;
  add_model_arenas(out, "query backbone", *n.backbone, buffers);
  add_model_arenas(out, "query head", *n.head, buffers);
  add_model_arenas(out, "key backbone", *n.k_backbone, buffers);
  add_model_arenas(out, "key head", *n.k_head, buffers);
  add_optimizer_arenas(out, "backbone", *n.opt_backbone);
  add_optimizer_arenas(out, "head", *n.opt_head);
  return out;
}
}  // namespace

NamedArenas replica_arenas(Nets& n) { return arenas(n, /*buffers=*/false); }
NamedArenas state_arenas(Nets& n) { return arenas(n, /*buffers=*/true); }
NamedTensors replica_tensors(Nets& n) { return {{"queue", n.queue.keys->t}, {"queue pointer", n.queue.ptr->t}}; }

void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader) {
  add_model(w, *n.k_backbone, "");
  add_model(w, *n.k_head, "key.head.");
  add_model(w, *n.backbone, "query.backbone.");
  add_model(w, *n.head, "query.head.");
  add_optimizer_state(w, *n.opt_backbone, "optim.backbone.");
  add_optimizer_state(w, *n.opt_head, "optim.head.");
  w.add_f32("moco.queue", n.queue.keys->t);
  w.add_i64("moco.queue_ptr", {1}, {n.queue.read_ptr()});
  const std::vector<int64_t> packed = loader.pack();
  w.add_i64("run.loader", {static_cast<int64_t>(packed.size())}, packed);
  for (const auto& kv : n.smooth_backbone->state().to_strings()) w.add_metadata("backbone." + kv.first, kv.second);
  for (const auto& kv : n.smooth_head->state().to_strings()) w.add_metadata("head." + kv.first, kv.second);
}

data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n) {
  load_model(f, *n.k_backbone, "", /*allow_unexpected=*/true);
  load_model(f, *n.k_head, "key.head.");
  load_model(f, *n.backbone, "query.backbone.");
  load_model(f, *n.head, "query.head.");
  load_optimizer_state(f, *n.opt_backbone, "optim.backbone.");
  load_optimizer_state(f, *n.opt_head, "optim.head.");
  const Shape& qs = n.queue.keys->t.shape;
  const std::vector<int64_t> want{qs[0], qs[1]}, one{1};
  from_host(n.queue.keys->t, f.f32("moco.queue", &want));
  const int64_t ptr = f.i64("moco.queue_ptr", &one)[0];
  TS_CHECK(ptr >= 0 && ptr < qs[0], f.path(), ": moco.queue_ptr ", ptr, " is outside the queue of ", qs[0], " keys");
  from_host(n.queue.ptr->t, std::vector<int32_t>{static_cast<int32_t>(ptr)});
  n.smooth_backbone->restore(TeacherState::from_strings(f.metadata_under("backbone.")));
  n.smooth_head->restore(TeacherState::from_strings(f.metadata_under("head.")));
  return data::LoaderPosition::unpack(f.i64("run.loader"));
}

}  // namespace tessera::moco
