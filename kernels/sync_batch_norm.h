// SyncBN's kernels: batch normalisation whose statistics cover the global batch, split across
// ranks (engine/ops_norm.cpp issues one all-reduce between the two halves of each pass).
//
//   forward:  batch_norm_sums          per channel (sum d, sum d^2) of this rank's shard, in
//                                      double, where d = x - shift and shift is the layer's
//                                      running mean (the same on every rank under SyncBN)
//             -- all-reduce (sum) over ranks --
//             batch_norm_sync_stats    mean = shift + sum d / M, var = sum d^2 / M - (sum d / M)^2
//                                      (biased), invstd, over the M = sum of the ranks' N HW, and
//                                      the running statistics (unbiased var, M / (M - 1))
//             batch_norm_forward_eval  y = gamma (x - mean) invstd + beta with these statistics
//   backward: batch_norm_backward_sums per channel (sum dy, sum dy xhat) of the shard, written
//                                      twice: `local` keeps them, `global` is all-reduced
//             -- all-reduce (sum) over ranks --
//             batch_norm_backward_apply dx = gamma invstd (dy - S_dy / M - xhat S_dyxhat / M)
//                                      with the global sums; dgamma, dbeta from the local ones
//                                      (the gradient all-reduce averages them like any other)
//
// Layouts: x, dy, dx (N, C, HW) of this rank; sums (2, C) double: row 0 the plain sums, row 1
// the second ones. Sums of squares minus the squared mean cancel catastrophically when the
// spread is small against the mean (a channel after ReLU at 1 x 1 resolution): the shift by
// the running mean, which follows the batch mean, and double products keep the digits.
// `count` is the global M.
// Bytes: sums read x once (4 per element), backward sums read x and dy (8), apply reads both
// and writes dx (12); the per-channel vectors are negligible.
// Tests: tests/distributed_test.cpp (DistributedRanks.SyncBatchNormEqualsOneProcessOnTheGlobalBatch:
// two ranks against batch_norm2d on the whole batch; SyncBatchNormKernels.CudaMatchesCpu).
#pragma once

#include <cstdint>

#include "kernels/batch_norm.h"
#include "kernels/common/cost.h"

#define TS_SYNC_BATCH_NORM_KERNELS                                                                    \
  /* shift (C): the running mean */                                                                  \
  void batch_norm_sums(const float* x, const float* shift, double* sums, int64_t n, int64_t c, int64_t hw); \
  /* sums (2, C) global, of x - running_mean; mean, var, invstd (C) out; running_mean, */           \
  /* running_var (C) updated */                                                                      \
  void batch_norm_sync_stats(const double* sums, double count, float* mean, float* var, float* invstd, \
                             float* running_mean, float* running_var, int64_t c, float momentum, float eps); \
  void batch_norm_backward_sums(const float* x, const float* dy, const float* mean, const float* invstd, \
                                double* local, double* global, int64_t n, int64_t c, int64_t hw);     \
  /* dx (N, C, HW), dgamma, dbeta (C): added (+=) or written (=) as the BnAccumulate bits say */    \
  void batch_norm_backward_apply(const float* x, const float* dy, const float* gamma, const float* mean, \
                                 const float* invstd, const double* local, const double* global,      \
                                 double count, float* dx, float* dgamma, float* dbeta, int64_t n,     \
                                 int64_t c, int64_t hw, uint32_t accumulate);

namespace kernels::cpu {
TS_SYNC_BATCH_NORM_KERNELS
}
namespace kernels::cuda {
TS_SYNC_BATCH_NORM_KERNELS
}
#undef TS_SYNC_BATCH_NORM_KERNELS

namespace kernels {
TS_KERNEL_COST(batch_norm_sums, const float*, const float*, double*, int64_t n, int64_t c, int64_t hw) {
  return {4.0 * n * c * hw, 3.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_sums, const float*, const float*, const float*, const float*, double*, double*,
               int64_t n, int64_t c, int64_t hw) {
  return {8.0 * n * c * hw, 5.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_apply, const float*, const float*, const float*, const float*, const float*,
               const double*, const double*, double, float*, float*, float*, int64_t n, int64_t c, int64_t hw,
               uint32_t) {
  return {12.0 * n * c * hw, 6.0 * n * c * hw};
}
}  // namespace kernels
