// Per-element update rules of the fused optimizers (kernels/optimizer.h), shared by the CPU
// and CUDA backends. As in kernels/common/sts_rule.h, every multiply-add is an explicit fmaf
// so the rounding does not depend on which products nvcc or g++ choose to fuse: the CPU and
// CUDA steps of SGD and AdamW are bit-identical on the same inputs.
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
// Returns the trust ratio and sets the weight decay that applies.
TS_HD float lars_trust(float w_norm, float g_norm, float weight_decay, float eta, float eps, bool adapt,
                       float* applied_weight_decay) {
  if (!adapt || w_norm == 0.0f || g_norm == 0.0f) {
    *applied_weight_decay = 0.0f;
    return 1.0f;
  }
  *applied_weight_decay = weight_decay;
  return eta * w_norm / (fmaf(weight_decay, w_norm, g_norm) + eps);
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
