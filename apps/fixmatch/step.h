// One FixMatch training step (REFERENCE.md), with the teacher smoothed after the optimizer:
//
//   x = [labeled (B) | unlabeled weak (U = mu B) | unlabeled strong (U)]
//   logits = student(x), train-mode BN over the whole concatenated batch
//   q = softmax(weak rows)  (or of the teacher's weak logits, --pseudo-labels teacher)
//   pseudo-label = argmax q, mask = max q >= threshold
//   loss = CE(labeled rows, labels) + lambda_u (1 / U) sum mask * CE(strong rows, pseudo-label)
//   backward, SGD Nesterov at `lr`, then teacher <- smoother(student, k)
//
// Both terms are one weighted cross-entropy over the concatenated logits: labeled rows weigh
// N / B, weak rows 0 and strong rows lambda_u N / U mask, so (1 / N) sum w CE is exactly the
// sum above. The weak rows carry no gradient (weight 0), as the reference's detach. With
// --lambda-u 0 the batch is the labeled view alone (U = 0).
//
// The step never waits for the device: the per-row labels and weights, the mask, the
// pseudo-labels and the counts of kept and correct pseudo-labels are built on the device
// (kernels/fixmatch_targets.h), and what is logged goes to device slots the caller reads later.
#pragma once

#include <cstdint>

#include "apps/fixmatch/config.h"
#include "apps/fixmatch/nets.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/profile.h"

namespace tessera::fixmatch {

// Where step k leaves its logged numbers, on the device: losses[0] the supervised term,
// losses[1] the unsupervised one (left as is with --lambda-u 0); counts[0] the pseudo-labels
// kept by the threshold, counts[1] those of them that match the true label.
struct StepSlots {
  float* losses;    // (2)
  int32_t* counts;  // (2)
};

// Runs step `step` (0-based) on `batch`: views[0] the labeled images (B, C, H, W) with
// labels[0] (B); with lambda-u > 0 also views[1] / views[2] the weak and strong views of the
// unlabeled images (U, C, H, W) with their true labels labels[1] (U), used only for the
// logged pseudo-label accuracy. Resets the graph and its workspace first.
void train_step(Nets& n, const Config& c, Graph& g, const data::Batch& batch, int64_t step, float lr, StepSlots slots,
                profile::PhaseSequence& phases);

}  // namespace tessera::fixmatch
