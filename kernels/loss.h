// Loss kernels: per-row losses (the batch mean is reduce.h's sum_forward with scale 1/N)
// and their backward passes, which read the loss gradient dloss[0] on the device and scale
// it by `scale` (1/N), so no host sync is needed. Rows are independent: OpenMP over rows on
// the CPU, one warp per row on CUDA.
//
//   byol_loss        row_i = 2 - 2 cos(p_i, z_i), cos of the L2-normalised rows (eps-clamped
//                    as F.normalize). Forward reads p, z: 8 n d bytes, 6 n d FLOPs; backward
//                    reads p, z and accumulates into dp and / or dz (nullptr: not needed).
//   cross_entropy    row_i = w_i (lse_i - x_i[label_i]), lse = log sum_j exp(x_ij) computed
//                    after subtracting the row max. w = nullptr means w_i = 1 (plain CE);
//                    FixMatch passes its confidence mask. A label outside [0, k) makes the
//                    row's loss NaN (visible in the loss, never an out-of-bounds read).
//                    Forward: 4 n k bytes, ~3 n k FLOPs + n k exp; keeps lse (n) for the
//                    backward, dx_ij += g w_i (softmax_ij - [j == label_i]): 12 n k bytes.
//   cross_entropy_soft  row_i = sum_j t_ij (lse_i - x_ij); backward dx_ij += g (T_i softmax_ij
//                    - t_ij) with T_i = sum_j t_ij (1 for a distribution). 8 n k bytes forward.
//   argmax_max_prob  no gradient: index of each row's maximum (first on ties) and its softmax
//                    probability 1 / sum_j exp(x_ij - max). A NaN is the answer only at index 0
//                    (the rule `x_j > x_best` from best = 0), and its row's probability is NaN.
//                    4 n k bytes.
// Shared math: kernels/common/softmax.h, kernels/common/l2norm.h.
// Tests: tests/ops_loss_test.cpp (gradient checks incl. N = 1 and K = 1000, CUDA vs CPU
// where a GPU exists, large-logit stability, bad labels), tests/autograd_test.cpp.
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_LOSS_KERNELS                                                                            \
  /* p, z (n, d), row_loss (n) */                                                                  \
  void byol_loss_forward(const float* p, const float* z, float* row_loss, int64_t n, int64_t d,    \
                         float eps);                                                               \
  /* dloss (1); dp, dz (n, d) or nullptr */                                                        \
  void byol_loss_backward(const float* p, const float* z, const float* dloss, float scale,         \
                          float* dp, float* dz, int64_t n, int64_t d, float eps);                  \
  /* logits (n, k), labels (n), weight (n) or nullptr, row_loss (n), lse (n) */                    \
  void cross_entropy_forward(const float* logits, const int32_t* labels, const float* weight,      \
                             float* row_loss, float* lse, int64_t n, int64_t k);                   \
  /* dloss (1), dlogits (n, k) */                                                                  \
  void cross_entropy_backward(const float* logits, const int32_t* labels, const float* weight,     \
                              const float* lse, const float* dloss, float scale, float* dlogits,   \
                              int64_t n, int64_t k);                                               \
  /* logits, targets (n, k), row_loss (n), lse (n) */                                              \
  void cross_entropy_soft_forward(const float* logits, const float* targets, float* row_loss,      \
                                  float* lse, int64_t n, int64_t k);                               \
  void cross_entropy_soft_backward(const float* logits, const float* targets, const float* lse,    \
                                   const float* dloss, float scale, float* dlogits, int64_t n,     \
                                   int64_t k);                                                     \
  /* logits (n, k), argmax (n), max_prob (n) */                                                    \
  void argmax_max_prob(const float* logits, int32_t* argmax, float* max_prob, int64_t n, int64_t k);

namespace kernels::cpu {
TS_LOSS_KERNELS
}
namespace kernels::cuda {
TS_LOSS_KERNELS
}
#undef TS_LOSS_KERNELS

// Costs for the profiler (kernels/common/cost.h), from the counts above.
namespace kernels {
TS_KERNEL_COST(byol_loss_forward, const float*, const float*, float*, int64_t n, int64_t d, float) {
  return {8.0 * n * d + 4.0 * n, 6.0 * n * d};
}
TS_KERNEL_COST(byol_loss_backward, const float*, const float*, const float*, float, float* dp, float* dz,
               int64_t n, int64_t d, float) {
  return {(8.0 + 8.0 * (dp != nullptr) + 8.0 * (dz != nullptr)) * n * d, 10.0 * n * d};
}
TS_KERNEL_COST(cross_entropy_forward, const float*, const int32_t*, const float*, float*, float*, int64_t n,
               int64_t k) {
  return {4.0 * n * k + 16.0 * n, 4.0 * n * k};
}
TS_KERNEL_COST(cross_entropy_backward, const float*, const int32_t*, const float*, const float*, const float*,
               float, float*, int64_t n, int64_t k) {
  return {12.0 * n * k + 12.0 * n, 4.0 * n * k};
}
TS_KERNEL_COST(cross_entropy_soft_forward, const float*, const float*, float*, float*, int64_t n, int64_t k) {
  return {8.0 * n * k + 8.0 * n, 5.0 * n * k};
}
TS_KERNEL_COST(cross_entropy_soft_backward, const float*, const float*, const float*, const float*, float,
               float*, int64_t n, int64_t k) {
  return {16.0 * n * k + 4.0 * n, 5.0 * n * k};
}
TS_KERNEL_COST(argmax_max_prob, const float*, int32_t*, float*, int64_t n, int64_t k) {
  return {4.0 * n * k + 8.0 * n, 3.0 * n * k};
}
}  // namespace kernels
