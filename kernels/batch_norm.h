// Batch normalisation over the channels of NCHW float32 (batch_norm1d is H = W = 1).
//
//   train: mean_c, var_c over (N, H, W) of the batch (biased var normalises);
//          y = gamma_c (x - mean_c) invstd_c + beta_c, invstd_c = 1 / sqrt(var_c + eps);
//          running_mean = (1 - momentum) running_mean + momentum mean_c,
//          running_var  = (1 - momentum) running_var  + momentum var_c * M / (M - 1)  (unbiased,
//          M = N H W), num_batches += 1: PyTorch's conventions, and cuDNN's (its
//          exponentialAverageFactor is PyTorch's momentum).
//   eval:  the same y with running_mean / running_var in place of the batch statistics.
// Bytes: forward reads x twice (statistics, then y) and writes y: 12 per element; backward
// reads x and dy twice and adds into dx: about 20 per element. FLOPs: about 10 per element
// each way: these kernels are bound by memory bandwidth.
// The train forward saves mean_c and invstd_c (2 C floats from the caller's workspace) for the
// backward, as cuDNN's resultSaveMean / resultSaveInvVariance.
// Tests: tests/ops_norm_test.cpp (gradient checks, running statistics; CUDA vs CPU).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_BATCH_NORM_KERNELS                                                                    \
  /* x, y (N, C, HW); gamma, beta, running_mean, running_var, save_mean, save_invstd (C); */      \
  /* num_batches (1) */                                                                          \
  void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y,  \
                                float* running_mean, float* running_var, float* num_batches,       \
                                float* save_mean, float* save_invstd, int64_t n, int64_t c,       \
                                int64_t hw, float momentum, float eps);                           \
  void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta,             \
                               const float* running_mean, const float* running_var, float* y,    \
                               int64_t n, int64_t c, int64_t hw, float eps);                      \
  /* Gradients of the train forward, accumulated (+=) into dx (N, C, HW), dgamma, dbeta (C); */   \
  /* all three are required (the engine passes scratch for an input that needs none). */          \
  void batch_norm_backward_train(const float* x, const float* dy, const float* gamma,             \
                                 const float* save_mean, const float* save_invstd, float* dx,     \
                                 float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,   \
                                 float eps);                                                      \
  /* Gradients of the eval forward (statistics are constants), accumulated likewise. */         \
  void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma,              \
                                const float* running_mean, const float* running_var, float* dx,  \
                                float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,   \
                                float eps);

namespace kernels::cpu {
TS_BATCH_NORM_KERNELS
}
namespace kernels::cuda {
TS_BATCH_NORM_KERNELS
}
#undef TS_BATCH_NORM_KERNELS

// Costs for the profiler (kernels/common/cost.h), from the counts above (M = N HW elements a
// channel, per-channel vectors ignored).
namespace kernels {
TS_KERNEL_COST(batch_norm_forward_train, const float*, const float*, const float*, float*, float*, float*, float*,
               float*, float*, int64_t n, int64_t c, int64_t hw, float, float) {
  return {12.0 * n * c * hw, 10.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_forward_eval, const float*, const float*, const float*, const float*, const float*,
               float*, int64_t n, int64_t c, int64_t hw, float) {
  return {8.0 * n * c * hw, 2.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_train, const float*, const float*, const float*, const float*, const float*,
               float*, float*, float*, int64_t n, int64_t c, int64_t hw, float) {
  return {20.0 * n * c * hw, 10.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_eval, const float*, const float*, const float*, const float*, const float*,
               float*, float*, float*, int64_t n, int64_t c, int64_t hw, float) {
  return {20.0 * n * c * hw, 6.0 * n * c * hw};
}
}  // namespace kernels
