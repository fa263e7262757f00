// One BYOL training step, the heart of the program (docs/TOUR.md follows it to the kernels):
//
//   teacher <- smoother(student, k)         from the student the previous optimizer step left
//   q_v = predictor(projector(backbone(view_v)))      student, train-mode BN, on the tape
//   z_v = t_projector(t_backbone(view_v))             teacher, train-mode BN, no gradient
//   loss = byol_loss(q_1, z_2) + byol_loss(q_2, z_1)  each 2 - 2 cos, averaged over the batch
//   backward; one fused optimizer step per student arena at learning rate `lr`
#pragma once

#include <cstdint>

#include "apps/byol/nets.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/profile.h"

namespace tessera::byol {

// Runs step `step` (0-based) on `batch` (its two views, each (B, C, H, W) on the nets'
// device). Resets the graph and its workspace first. Returns the loss, a scalar whose value
// stays on the device (read it only when logging: a read waits for the step to finish).
// `phases` names the parts of the step for the profiler and NVTX.
Var* train_step(Nets& n, Graph& g, const data::Batch& batch, int64_t step, float lr, profile::PhaseSequence& phases);

}  // namespace tessera::byol
