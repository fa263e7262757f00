// Row-wise L2 normalisation y_i = x_i / max(||x_i||, eps) (BYOL's projections, embeddings)
// and its backward dx_i += (dy_i - y_i <y_i, dy_i>) / ||x_i|| (dy_i / eps where clamped).
//   forward   reads x, writes y and the row norms: 8 n d bytes, 3 n d FLOPs.
//   backward  reads y, dy, dx, writes dx: 16 n d bytes, 5 n d FLOPs.
// Per-element math: kernels/common/l2norm.h. The forward keeps the norms (n floats) so the
// backward needs one pass over y and dy instead of recomputing them from x.
// Tests: tests/ops_reduce_test.cpp (gradient checks incl. N = 1 and odd D; CUDA vs CPU).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_L2_NORMALIZE_KERNELS                                                                   \
  /* x, y (n, d), norm (n) = ||x_i|| */                                                           \
  void l2_normalize_forward(const float* x, float* y, float* norm, int64_t n, int64_t d, float eps); \
  /* y, dy, dx (n, d), norm (n) from the forward */                                               \
  void l2_normalize_backward(const float* y, const float* norm, const float* dy, float* dx, int64_t n, \
                             int64_t d, float eps);

namespace kernels::cpu {
TS_L2_NORMALIZE_KERNELS
}
namespace kernels::cuda {
TS_L2_NORMALIZE_KERNELS
}
#undef TS_L2_NORMALIZE_KERNELS

namespace kernels {
TS_KERNEL_COST(l2_normalize_forward, const float*, float*, float*, int64_t n, int64_t d, float) {
  return {8.0 * n * d + 4.0 * n, 3.0 * n * d};
}
TS_KERNEL_COST(l2_normalize_backward, const float*, const float*, const float*, float*, int64_t n, int64_t d,
               float) {
  return {16.0 * n * d + 4.0 * n, 5.0 * n * d};
}
}  // namespace kernels
