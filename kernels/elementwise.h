// Element-wise kernels: fill, add, scale, relu, leaky_relu and their backward passes.
// Each is a few reads and one write per element (fill 4 bytes/element, scale and relu 8,
// add and the accumulating backward passes 12: read two operands, write one), at most 2 FLOPs
// an element, so they run at memory bandwidth on both backends.
// The per-element math is in kernels/common/activation.h, shared by both backends.
// Tests: tests/ops_basic_test.cpp (gradient checks; CUDA vs CPU where a GPU exists).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_ELEMENTWISE_KERNELS                                                        \
  /* x[i] = value.  x (n) */                                                          \
  void fill(float* x, int64_t n, float value);                                        \
  /* y = a + b.  a, b, y (n) */                                                       \
  void add_forward(const float* a, const float* b, float* y, int64_t n);              \
  /* y = s * x.  x, y (n) */                                                          \
  void scale_forward(const float* x, float* y, int64_t n, float s);                   \
  /* dx += s * dy: the backward of add (s = 1) and scale.  dy, dx (n) */              \
  void scale_accumulate(const float* dy, float* dx, int64_t n, float s);              \
  /* y = max(x, 0) and y = x >= 0 ? x : slope * x (slope = 0 gives relu). x, y (n) */ \
  void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);          \
  /* dx += dy * (y > 0 ? 1 : slope), y the forward's output, slope >= 0; dx = ... (dx not */ \
  /* read) when !accumulate.  y, dy, dx (n) */                                            \
  void leaky_relu_backward(const float* y, const float* dy, float* dx, int64_t n, float slope, \
                           bool accumulate);

namespace kernels::cpu {
TS_ELEMENTWISE_KERNELS
}
namespace kernels::cuda {
TS_ELEMENTWISE_KERNELS
}
#undef TS_ELEMENTWISE_KERNELS

// Costs for the profiler (kernels/common/cost.h).
namespace kernels {
TS_KERNEL_COST(fill, float*, int64_t n, float) { return {4.0 * n, 0.0}; }
TS_KERNEL_COST(add_forward, const float*, const float*, float*, int64_t n) { return {12.0 * n, 1.0 * n}; }
TS_KERNEL_COST(scale_forward, const float*, float*, int64_t n, float) { return {8.0 * n, 1.0 * n}; }
TS_KERNEL_COST(scale_accumulate, const float*, float*, int64_t n, float) { return {12.0 * n, 2.0 * n}; }
TS_KERNEL_COST(leaky_relu_forward, const float*, float*, int64_t n, float) { return {8.0 * n, 1.0 * n}; }
TS_KERNEL_COST(leaky_relu_backward, const float*, const float*, float*, int64_t n, float, bool) {
  return {16.0 * n, 2.0 * n};  // reads y, dy and dx, writes dx
}
}  // namespace kernels
