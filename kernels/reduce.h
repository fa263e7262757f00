// Whole-tensor reductions: y = scale * sum(x) (sum, mean, and the batch mean of every loss)
// and its backward, a broadcast of the scalar gradient.
//   sum_forward     4 n bytes read, n FLOPs.
//   sum_backward    8 n bytes (read and write dx), n FLOPs; dy is read on the device, so
//                   no host sync is needed to learn the loss gradient.
// The CUDA sum has a fixed reduction order (one block for small n; per-block partials and a
// fixed-order final pass for large n, no float atomics), so it is deterministic run to run.
// The CPU reference accumulates in double.
// Tests: tests/ops_reduce_test.cpp (sum / mean gradient checks, CUDA vs CPU where a GPU exists).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_REDUCE_KERNELS                                                      \
  /* y[0] = scale * sum_i x[i].  x (n), y (1) */                               \
  void sum_forward(const float* x, float* y, int64_t n, float scale);          \
  /* dx[i] += scale * dy[0].  dy (1), dx (n) */                                \
  void sum_backward(const float* dy, float* dx, int64_t n, float scale);

namespace kernels::cpu {
TS_REDUCE_KERNELS
}
namespace kernels::cuda {
TS_REDUCE_KERNELS
}
#undef TS_REDUCE_KERNELS

namespace kernels {
TS_KERNEL_COST(sum_forward, const float*, float*, int64_t n, float) { return {4.0 * n + 4, 1.0 * n}; }
TS_KERNEL_COST(sum_backward, const float*, float*, int64_t n, float) { return {8.0 * n + 4, 1.0 * n}; }
}  // namespace kernels
