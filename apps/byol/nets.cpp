#include "apps/byol/nets.h"

#include <string>
#include <vector>

#include "kernels/common/philox.h"

namespace tessera::byol {

uint64_t part_seed(uint64_t seed, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (uint64_t{1} << 40) + part), 0);
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

ModelSpec mlp_spec(int in, int hidden, int out) {
  ModelSpec s;
  s.arch = "mlp";
  s.mlp_sizes = {in, hidden, out};
  return s;
}

OptimizerConfig optimizer_config(const Config& c) {
  OptimizerConfig o;
  o.kind = parse_optimizer(c.optimizer);
  o.weight_decay = static_cast<float>(c.weight_decay);
  o.momentum = static_cast<float>(c.sgd_momentum);
  o.eta = static_cast<float>(c.lars_eta);
  o.lars_clip_lr = c.lars_clip_lr;
  o.exclude_bias_and_norm = true;
  return o;
}

}  // namespace

Nets build_nets(const Config& c, int in_channels, Device device, int64_t total_steps) {
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);
  Nets n;
  n.backbone = make_model(backbone_spec(c, in_channels), device);
  n.backbone->init(part_seed(seed, kBackbone));
  const int d = n.backbone->feature_dim();
  n.projector = make_model(mlp_spec(d, c.proj_hidden, c.proj_dim), device);
  n.projector->init(part_seed(seed, kProjector));
  n.predictor = make_model(mlp_spec(c.proj_dim, c.pred_hidden, c.proj_dim), device);
  n.predictor->init(part_seed(seed, kPredictor));
  n.t_backbone = make_model(n.backbone->spec(), device);
  n.t_projector = make_model(n.projector->spec(), device);
  n.smooth_backbone = std::make_unique<TeacherSmoother>(n.backbone->param_table(), n.backbone->buffer_table(), device,
                                                        c.teacher.config(total_steps, part_seed(seed, kTeacherBackbone)));
  n.smooth_projector = std::make_unique<TeacherSmoother>(
      n.projector->param_table(), n.projector->buffer_table(), device,
      c.teacher.config(total_steps, part_seed(seed, kTeacherProjector)));
  n.smooth_backbone->initialise(n.backbone->params(), n.t_backbone->params(), n.backbone->buffers(),
                                n.t_backbone->buffers());
  n.smooth_projector->initialise(n.projector->params(), n.t_projector->params(), n.projector->buffers(),
                                 n.t_projector->buffers());
  const OptimizerConfig oc = optimizer_config(c);
  n.opt_backbone = std::make_unique<Optimizer>(n.backbone->param_table(), device, oc);
  n.opt_projector = std::make_unique<Optimizer>(n.projector->param_table(), device, oc);
  n.opt_predictor = std::make_unique<Optimizer>(n.predictor->param_table(), device, oc);
  return n;
}

void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader) {
  add_model(w, *n.t_backbone, "");
  add_model(w, *n.t_projector, "teacher.projector.");
  add_model(w, *n.backbone, "student.backbone.");
  add_model(w, *n.projector, "student.projector.");
  add_model(w, *n.predictor, "student.predictor.");
  add_optimizer_state(w, *n.opt_backbone, "optim.backbone.");
  add_optimizer_state(w, *n.opt_projector, "optim.projector.");
  add_optimizer_state(w, *n.opt_predictor, "optim.predictor.");
  const std::vector<int64_t> packed = loader.pack();
  w.add_i64("run.loader", {static_cast<int64_t>(packed.size())}, packed);
  for (const auto& kv : n.smooth_backbone->state().to_strings()) w.add_metadata("backbone." + kv.first, kv.second);
  for (const auto& kv : n.smooth_projector->state().to_strings()) w.add_metadata("projector." + kv.first, kv.second);
}

data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n) {
  load_model(f, *n.t_backbone, "", /*allow_unexpected=*/true);
  load_model(f, *n.t_projector, "teacher.projector.");
  load_model(f, *n.backbone, "student.backbone.");
  load_model(f, *n.projector, "student.projector.");
  load_model(f, *n.predictor, "student.predictor.");
  load_optimizer_state(f, *n.opt_backbone, "optim.backbone.");
  load_optimizer_state(f, *n.opt_projector, "optim.projector.");
  load_optimizer_state(f, *n.opt_predictor, "optim.predictor.");
  n.smooth_backbone->restore(TeacherState::from_strings(f.metadata_under("backbone.")));
  n.smooth_projector->restore(TeacherState::from_strings(f.metadata_under("projector.")));
  return data::LoaderPosition::unpack(f.i64("run.loader"));
}


NamedArenas replica_arenas(Nets& n, bool sync_bn) {
  NamedArenas out;
  add_model_arenas(out, "student backbone", *n.backbone, sync_bn);
  add_model_arenas(out, "student projector", *n.projector, sync_bn);
  add_model_arenas(out, "student predictor", *n.predictor, sync_bn);
  add_model_arenas(out, "teacher backbone", *n.t_backbone, sync_bn);
  add_model_arenas(out, "teacher projector", *n.t_projector, sync_bn);
  add_optimizer_arenas(out, "backbone", *n.opt_backbone);
  add_optimizer_arenas(out, "projector", *n.opt_projector);
  add_optimizer_arenas(out, "predictor", *n.opt_predictor);
  return out;
}

NamedArenas state_arenas(Nets& n) { return replica_arenas(n, /*sync_bn=*/true); }

}  // namespace tessera::byol
