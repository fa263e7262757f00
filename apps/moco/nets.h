// moco's networks: the query encoder (backbone -> MLP head, trained), the key encoder (its
// smoothed copy), the smoothers and optimizers, the queue of negative keys; and how all of it
// is laid out in a checkpoint.
#pragma once

#include <cstdint>
#include <memory>

#include "apps/moco/config.h"
#include "apps/run/distributed_run.h"
#include "data/loader.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/nonfinite.h"
#include "engine/optimizer.h"
#include "engine/teacher.h"
#include "engine/tensor.h"
#include "models/model.h"

namespace tessera::moco {

// Independent seeds for the parts of a run, from the run's seed (program 3 of the family: byol
// is 1, fixmatch 2), so no two parts share their draws.
uint64_t part_seed(uint64_t seed, uint32_t part);
enum Part : uint32_t { kBackbone = 0, kHead = 1, kKeyBackbone = 2, kKeyHead = 3, kQueue = 4, kKeyShuffle = 5 };

// The ring of negative keys: K rows of the head's dimension on the nets' device, each an
// L2-normalised key; `ptr` is the row the next batch overwrites (a multiple of the global
// batch). The pointer lives on the device beside the rows: the enqueue kernel advances it
// only when the step is not skipped (--on-nonfinite skip), which the host cannot know
// without waiting for the device.
struct KeyQueue {
  std::unique_ptr<OwnedTensor> keys;  // (K, D) f32
  std::unique_ptr<OwnedTensor> ptr;   // (1) i32
  int64_t read_ptr() const;           // the pointer's value (waits for the device)
};

struct Nets {
  std::unique_ptr<Model> backbone, head;      // query encoder (the student)
  std::unique_ptr<Model> k_backbone, k_head;  // key encoder (the teacher)
  std::unique_ptr<TeacherSmoother> smooth_backbone, smooth_head;
  std::unique_ptr<Optimizer> opt_backbone, opt_head;
  // Checks the loss and gradients after backward, on the device (apps/run/nonfinite.h); the
  // run sets it, a test may leave it null.
  NonfiniteMonitor* nonfinite = nullptr;
  bool skip_nonfinite = false;  // --on-nonfinite skip: the enqueue reads the monitor's flag too
  KeyQueue queue;
  // Data parallel (null: one process): the ranks the query gradients are averaged over and the
  // key batch is shuffled across (shuffle BN, step.h); the shuffle's seed.
  dist::Communicator* ranks = nullptr;
  uint64_t shuffle_seed = 0;
};

// What every rank must hold identically: the query and key encoders' parameters, the
// optimizers' state (arenas), and the queue with its pointer (tensors). BN buffers are not in
// it: each rank's BN sees its own shard (queries) or slice (keys), as MoCo's GPUs do.
NamedArenas replica_arenas(Nets& n);
NamedTensors replica_tensors(Nets& n);
// Everything a start or resume copies from rank 0: the above and the BN buffers.
NamedArenas state_arenas(Nets& n);

// The query encoder initialised from the run's seed, the key encoder an exact copy of it, the
// optimizers' state zero, the queue random unit vectors (as MoCo's randn + normalize).
// `total_steps` is the K of a cosine momentum schedule.
Nets build_nets(const Config& c, int in_channels, Device device, int64_t total_steps);

// ---- checkpoint layout ----------------------------------------------------------------------
//   (no prefix)                 key encoder backbone, torchvision names: the model users export
//   key.head.                   key encoder head
//   query.backbone. / query.head.
//   optim.backbone. / optim.head.   optimizer state arenas
//   moco.queue (K, D) f32, moco.queue_ptr (1) i64: the ring, so a resumed run sees the same negatives
//   run.loader                  loader position (int64)
//   metadata: run.program, run.config, run.step (TrainingRun); smoother state under
//   backbone. / head.; optimizer counters under optim.<part>.
void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader);
data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n);

}  // namespace tessera::moco
