// fixmatch's networks: the student (a WideResNet or ResNet classifier), the teacher (a smoothed
// copy of it, evaluated and exported), the smoother that updates the teacher and the SGD
// optimizer that updates the student; and how they are laid out in a checkpoint.
#pragma once

#include <cstdint>
#include <memory>

#include "apps/fixmatch/config.h"
#include "apps/run/distributed_run.h"
#include "data/loader.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/nonfinite.h"
#include "engine/optimizer.h"
#include "engine/teacher.h"
#include "models/model.h"

namespace tessera::fixmatch {

// Independent seeds for the parts of a run, from the run's seed (one Philox draw each).
uint64_t part_seed(uint64_t seed, uint32_t part);
enum Part : uint32_t { kStudent = 0, kTeacherMasks = 1 };

struct Nets {
  std::unique_ptr<Model> student, teacher;
  std::unique_ptr<TeacherSmoother> smoother;
  std::unique_ptr<Optimizer> opt;  // SGD with Nesterov momentum
  // Checks the loss and gradients after backward, on the device (apps/run/nonfinite.h); the
  // run sets it, a test may leave it null.
  NonfiniteMonitor* nonfinite = nullptr;
  // Data parallel: the ranks the gradients are averaged over right after backward (null: one
  // process).
  dist::Communicator* ranks = nullptr;
};
// Every arena of the run's state (what rank 0 broadcasts at the start and on resume), and
// those that stay identical on every rank (BN buffers only when `sync_bn`).
NamedArenas state_arenas(Nets& n);
NamedArenas replica_arenas(Nets& n, bool sync_bn);

// The student initialised from the run's seed, the teacher an exact copy of it, the optimizer's
// state zero. `spec` is the classifier (its problem() already checked).
Nets build_nets(const Config& c, const ModelSpec& spec, Device device);

// ---- checkpoint layout (last.safetensors) ---------------------------------------------------
//   (no prefix)      the teacher, PyTorch names: the model evaluated and exported
//   student.         the student
//   optim.           SGD momentum buffer (its step count as metadata)
//   smoothing.*      the smoother's state (metadata)
//   run.loader       loader position (int64); run.* metadata from TrainingRun
void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader);
data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n);

}  // namespace tessera::fixmatch
