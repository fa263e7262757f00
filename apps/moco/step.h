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
//                                                   ptr on the device: a step --on-nonfinite skip
//                                                   drops changes neither rows nor ptr
//
// With R > 1 ranks (data parallel, each rank a shard of B / R images of the global batch B),
// the key encoder uses MoCo's shuffle BN instead (the multi-GPU form of the paper):
//
//   all_gather the key views                        the global key batch (B, C, H, W), rank order
//   P = key_shuffle(seed, step, B)                  the same permutation on every rank
//   rank r forwards rows P[r B/R .. (r+1) B/R)      its slice of the shuffled batch, split into
//                                                   bn_splits / R sub-batches: its BN statistics
//                                                   mix images whose queries other ranks hold
//   all_gather the slices' keys; un-shuffle         keys (B, D) in global order
//   positives: rows [r B/R, (r+1) B/R)              this rank's shard
//   the query gradients all-reduced (mean) after backward; every rank enqueues all B keys, so
//   the ranks' queues stay bit-identical (K a multiple of B).
//
// A query is normalised with its shard's statistics, its positive key with those of a random
// subset of the global batch: the batch statistics they share no longer single out the
// positive among the keys (He et al. 2020, "Shuffling BN").
#pragma once

#include <cstdint>
#include <vector>

#include "apps/moco/nets.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/profile.h"

namespace tessera::moco {

struct StepResult {
  Var* loss = nullptr;  // (1), on the device: read it only when logging
  Tensor accuracy;      // (1), fraction of queries whose positive key has the largest logit
};

// Runs step `step` (0-based) on `batch` (views 0 and 1, each (B / R, C, H, W) on the nets'
// device: this rank's shard); B must be a multiple of bn_splits and bn_splits of R. Resets
// the graph and its workspace first.
StepResult train_step(Nets& n, Graph& g, const data::Batch& batch, int64_t step, float lr, float temperature,
                      int64_t bn_splits, profile::PhaseSequence& phases);

// Shuffle BN's permutation of a global key batch of n at `step`: Fisher-Yates on
// Philox(seed, kStreamKeyShuffle, step), so every rank draws the same one without talking.
// Row i of the shuffled batch is row perm[i] of the batch.
std::vector<int64_t> key_shuffle(uint64_t seed, int64_t step, int64_t n);
// inverse[perm[i]] = i: gathering with it un-shuffles.
std::vector<int64_t> inverse_permutation(const std::vector<int64_t>& perm);
// dst[i] = src[rows[i]] for the dst.shape[0] rows of dst (contiguous, first dimension the
// batch; same row size and device). One row copy each (B + B / R a step under R ranks), cheap
// beside the key encoder's forward; a gather kernel would make each one launch.
void gather_rows(const Tensor& dst, const Tensor& src, const int64_t* rows);

}  // namespace tessera::moco
