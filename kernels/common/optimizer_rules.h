// Per-element update rules of the fused optimizers (kernels/optimizer.h), shared by the CPU
// and CUDA backends. As in kernels/common/sts_rule.h, every multiply-add is an explicit fmaf
// so the rounding does not depend on which products nvcc or g++ choose to fuse: the CPU and
// CUDA steps of SGD, LARS and AdamW are bit-identical on the same inputs.
// Against PyTorch, which rounds `mul_` and `add_` separately, results differ by at most a few
// units in the last place per step (tests/optimizer_test.cpp holds the error budget).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/hd.h"

namespace kernels {

// What the optimizers need to know about one slot, uploaded once.
struct OptimizerSlot {
  int64_t offset;
  int64_t numel;
  float weight_decay;   // 0 for tensors excluded from decay (bias, BN) when exclusion is on
  int32_t adapt;        // LARS: 1 when the trust ratio applies (not excluded)
  int32_t first_chunk;  // the slot's chunks are [first_chunk, first_chunk + num_chunks)
  int32_t num_chunks;
};

// SGD as torch.optim.SGD (dampening 0):
//   d = g + wd * w;  buf = mu * buf + d;  step = nesterov ? d + mu * buf : buf;  w -= lr * step
// A zero-initialised buffer gives exactly PyTorch's first step (buf = d), because
// fmaf(mu, 0, d) == d.
TS_HD void sgd_element(float& w, float& buf, float g, float weight_decay, float lr, float momentum, bool nesterov) {
  const float d = fmaf(weight_decay, w, g);
  buf = fmaf(momentum, buf, d);
  const float step = nesterov ? fmaf(momentum, buf, d) : buf;
  w = fmaf(-lr, step, w);
}

// LARS as in solo-learn (the BYOL recipe): for an adapted tensor with non-zero norms,
//   trust = eta * |w| / (|g| + wd * |w| + eps),  d = (g + wd * w) * trust
// otherwise d = g (excluded tensors get neither decay nor adaptation); then SGD momentum.
// With clip_lr (solo-learn's clip_lr, on in its CIFAR recipe) trust becomes min(trust / lr, 1),
// so an adapted tensor moves at min(trust, lr) times its direction, never faster than the
// schedule's lr; lr 0 (a warm-up's first step) gives trust 1, a zero step either way.
// Returns the trust ratio and sets the weight decay that applies.
TS_HD float lars_trust(float w_norm, float g_norm, float weight_decay, float eta, float eps, bool adapt, bool clip_lr,
                       float lr, float* applied_weight_decay) {
  if (!adapt || w_norm == 0.0f || g_norm == 0.0f) {
    *applied_weight_decay = 0.0f;
    return 1.0f;
  }
  *applied_weight_decay = weight_decay;
  const float trust = eta * w_norm / (fmaf(weight_decay, w_norm, g_norm) + eps);
  return clip_lr ? fminf(trust / lr, 1.0f) : trust;
}

// LARS's norms are summed in one fixed order that both backends follow, so the CPU and CUDA
// LARS steps are bit-identical like SGD's and AdamW's (sums of squares with fmaf, plain adds;
// nothing a compiler may contract or reorder without fast-math).
//
// 1. Per chunk (lars_chunk_sums): the order of the CUDA block of kLarsChunkThreads threads
// that computes it: thread t accumulates elements begin + t, begin + t + 256, ... with fmaf;
// each warp of 32 folds by shuffles (lane l += lane l + o for o = 16, 8, 4, 2, 1); thread 0
// adds the 8 warp totals in order.
constexpr int kLarsChunkThreads = 256;
inline void lars_chunk_sums(const float* w, const float* g, int64_t begin, int64_t end, float* ww, float* gg) {
  float a[kLarsChunkThreads] = {}, b[kLarsChunkThreads] = {};
  for (int64_t base = begin; base < end; base += kLarsChunkThreads) {
    const int n = end - base < kLarsChunkThreads ? static_cast<int>(end - base) : kLarsChunkThreads;
    for (int t = 0; t < n; ++t) {
      a[t] = fmaf(w[base + t], w[base + t], a[t]);
      b[t] = fmaf(g[base + t], g[base + t], b[t]);
    }
  }
  float total_a = 0.0f, total_b = 0.0f;
  for (int warp = 0; warp < kLarsChunkThreads / 32; ++warp) {
    float* la = a + 32 * warp;
    float* lb = b + 32 * warp;
    for (int o = 16; o > 0; o >>= 1)
      for (int l = 0; l < o; ++l) {
        la[l] += la[l + o];
        lb[l] += lb[l + o];
      }
    total_a += la[0];
    total_b += lb[0];
  }
  *ww = total_a;
  *gg = total_b;
}

// 2. Per slot (lars_slot_sums), from its chunks' partials: kLarsLanes lanes, lane t
// summing partials t, t + kLarsLanes, ... in order, then a pairwise tree over the lanes
// (lane t += lane t + s for s = kLarsLanes / 2, ..., 1). The CUDA kernel is one block of
// kLarsLanes threads per slot doing exactly this in shared memory; this host version is the
// CPU twin's. partials (num_chunks, 2): sum of w^2, sum of g^2 per chunk.
// Both host versions are meant for the CPU twin and tests, not for device code.
constexpr int kLarsLanes = 256;
inline void lars_slot_sums(const float* partials, int32_t first_chunk, int32_t num_chunks, float* ww, float* gg) {
  float a[kLarsLanes] = {}, b[kLarsLanes] = {};
  for (int32_t j = 0; j < num_chunks; ++j) {
    a[j % kLarsLanes] += partials[2 * (first_chunk + j)];
    b[j % kLarsLanes] += partials[2 * (first_chunk + j) + 1];
  }
  for (int stride = kLarsLanes / 2; stride > 0; stride >>= 1)
    for (int t = 0; t < stride; ++t) {
      a[t] += a[t + stride];
      b[t] += b[t + stride];
    }
  *ww = a[0];
  *gg = b[0];
}

TS_HD void lars_element(float& w, float& buf, float g, float applied_weight_decay, float trust, float lr,
                        float momentum, bool nesterov) {
  const float d = fmaf(applied_weight_decay, w, g) * trust;
  buf = fmaf(momentum, buf, d);
  const float step = nesterov ? fmaf(momentum, buf, d) : buf;
  w = fmaf(-lr, step, w);
}

// AdamW as torch.optim.AdamW:
//   w *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - b_i^t
// sqrtf and the division are correctly rounded on both backends (no fast-math anywhere).
TS_HD void adamw_element(float& w, float& m, float& v, float g, float decay_factor, float beta1, float beta2,
                         float eps, float step_size, float bias_correction2_sqrt) {
  w *= decay_factor;
  m = fmaf(beta1, m, (1.0f - beta1) * g);
  v = fmaf(beta2, v, (1.0f - beta2) * (g * g));
  const float denom = sqrtf(v) / bias_correction2_sqrt + eps;
  w = fmaf(-step_size, m / denom, w);
}

}  // namespace kernels
