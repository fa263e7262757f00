#include "apps/fixmatch/nets.h"

#include <string>
#include <vector>

#include "kernels/common/philox.h"

namespace tessera::fixmatch {

uint64_t part_seed(uint64_t seed, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (uint64_t{2} << 40) + part), 0);
  const uint64_t hi = s.next_u32();
  return (hi << 32) | s.next_u32();
}

Nets build_nets(const Config& c, const ModelSpec& spec, Device device) {
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);
  Nets n;
  n.student = make_model(spec, device);
  n.student->init(part_seed(seed, kStudent));
  n.teacher = make_model(spec, device, false);

  n.smoother = std::make_unique<TeacherSmoother>(n.student->param_table(), n.student->buffer_table(), device,
                                                 c.teacher.config(c.steps, part_seed(seed, kTeacherMasks)));
  n.smoother->initialise(n.student->params(), n.teacher->params(), n.student->buffers(), n.teacher->buffers());

  OptimizerConfig oc;
  oc.kind = OptimizerKind::Sgd;
  oc.momentum = static_cast<float>(c.sgd_momentum);
  oc.nesterov = true;
  oc.weight_decay = static_cast<float>(c.weight_decay);
  oc.exclude_bias_and_norm = true;
  n.opt = std::make_unique<Optimizer>(n.student->param_table(), device, oc);
  return n;
}

void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader) {
  add_model(w, *n.teacher, "");
  add_model(w, *n.student, "student.");
  for (const auto& [name, arena] : n.opt->state_arenas()) add_arena(w, *arena, "optim." + name + ".");
  for (const auto& kv : n.opt->state_strings()) w.add_metadata(kv.first, kv.second);
  for (const auto& kv : n.smoother->state().to_strings()) w.add_metadata(kv.first, kv.second);
  const std::vector<int64_t> packed = loader.pack();
  w.add_i64("run.loader", {static_cast<int64_t>(packed.size())}, packed);
}

data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n) {
  load_model(f, *n.teacher, "", /*allow_unexpected=*/true);
  load_model(f, *n.student, "student.");
  for (const auto& [name, arena] : n.opt->state_arenas()) load_arenas(f, {arena}, "optim." + name + ".");
  n.opt->restore_state_strings(f.metadata());
  n.smoother->restore(TeacherState::from_strings(f.metadata()));
  return data::LoaderPosition::unpack(f.i64("run.loader"));
}

NamedArenas replica_arenas(Nets& n, bool sync_bn) {
  NamedArenas out{{"student parameters", &n.student->params()}, {"teacher parameters", &n.teacher->params()}};
  if (sync_bn) {
    out.emplace_back("student BN buffers", &n.student->buffers());
    out.emplace_back("teacher BN buffers", &n.teacher->buffers());
  }
  for (const auto& [key, arena] : n.opt->state_arenas()) out.emplace_back("optimizer " + key, arena);
  return out;
}

NamedArenas state_arenas(Nets& n) { return replica_arenas(n, /*sync_bn=*/true); }

}  // namespace tessera::fixmatch
