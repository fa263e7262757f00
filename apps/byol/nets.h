// byol's networks: the student (backbone -> projector -> predictor), the teacher (backbone ->
// projector, smoothed copies of the student's), the smoothers that update the teacher and the
// optimizers that update the student; and how all of it is laid out in a checkpoint.
#pragma once

#include <cstdint>
#include <memory>

#include "apps/byol/config.h"
#include "apps/run/distributed_run.h"
#include "data/loader.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/nonfinite.h"
#include "engine/optimizer.h"
#include "engine/teacher.h"
#include "models/model.h"

namespace tessera::byol {

// Independent seeds for the parts of a run, from the run's seed: one Philox draw each, so a
// projector never shares its initial draws with the backbone, nor two smoothers their masks.
uint64_t part_seed(uint64_t seed, uint32_t part);
enum Part : uint32_t { kBackbone = 0, kProjector = 1, kPredictor = 2, kTeacherBackbone = 3, kTeacherProjector = 4 };

// The student, the teacher and what updates them.
struct Nets {
  std::unique_ptr<Model> backbone, projector, predictor;     // student
  std::unique_ptr<Model> t_backbone, t_projector;            // teacher
  std::unique_ptr<TeacherSmoother> smooth_backbone, smooth_projector;
  std::unique_ptr<Optimizer> opt_backbone, opt_projector, opt_predictor;
  // Checks the loss and gradients after backward, on the device (apps/run/nonfinite.h); the
  // run sets it, a test may leave it null.
  NonfiniteMonitor* nonfinite = nullptr;
  // Data parallel: the ranks the gradients are averaged over right after backward (null: one
  // process).
  dist::Communicator* ranks = nullptr;
};
// Every arena of the run's state: student and teacher parameters and BN buffers, optimizer
// state (what rank 0 broadcasts at the start and on resume).
NamedArenas state_arenas(Nets& n);
// The arenas that must stay identical on every rank whatever the BN mode: the student's and
// the teacher's parameters and the optimizer state (BN buffers too when `sync_bn`).
NamedArenas replica_arenas(Nets& n, bool sync_bn);

// The student initialised from the run's seed, the teacher an exact copy of it, the optimizers'
// state zero. `total_steps` is the K of the teacher's cosine momentum schedule.
Nets build_nets(const Config& c, int in_channels, Device device, int64_t total_steps);

// ---- checkpoint layout ----------------------------------------------------------------------
//   (no prefix)           teacher backbone, torchvision names: the model users export
//   teacher.projector.    teacher projector
//   student.backbone. / student.projector. / student.predictor.
//   optim.backbone. / optim.projector. / optim.predictor.   optimizer state arenas
//   run.loader            loader position (int64)
//   metadata: run.program, run.config, run.step (TrainingRun); smoother state under
//   backbone. / projector.; optimizer counters under optim.<part>.
void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader);
data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n);

}  // namespace tessera::byol
