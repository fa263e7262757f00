// One MoCo v2 training step (He et al. 2020, Chen et al. 2020), with the key encoder smoothed
// by TMA / SE / STS:
//
//   key encoder <- smoother(query encoder, k)       from the encoder the previous optimizer step left
//   q = normalize(head(backbone(view_1)))           query encoder, train-mode BN, on the tape
//   k = normalize(k_head(k_backbone(view_2)))       key encoder, no gradient, split BN: the batch
//                                                   forwarded as bn_splits sub-batches
//   loss = InfoNCE(q, k, queue, T)                  positive at index 0, queue keys negatives
//   backward; one SGD step per query-encoder arena at learning rate `lr`
//   queue[ptr .. ptr + N) <- k; ptr <- (ptr + N) mod K   (after the backward, which reads the queue)
#pragma once

#include <cstdint>

#include "apps/moco/nets.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/profile.h"

namespace tessera::moco {

struct StepResult {
  Var* loss = nullptr;  // (1), on the device: read it only when logging
  Tensor accuracy;      // (1), fraction of queries whose positive key has the largest logit
};

// Runs step `step` (0-based) on `batch` (views 0 and 1, each (B, C, H, W) on the nets'
// device); B must be a multiple of bn_splits. Resets the graph and its workspace first.
StepResult train_step(Nets& n, Graph& g, const data::Batch& batch, int64_t step, float lr, float temperature,
                      int64_t bn_splits, profile::PhaseSequence& phases);

}  // namespace tessera::moco
