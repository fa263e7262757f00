// Pooling over NCHW float32: max pooling (ResNet's 3x3 stride-2 pad-1 after the imagenet stem)
// and global average pooling (the backbone's last op, (N, C, H, W) -> (N, C)).
// Max pooling: padding is never a candidate (only in-image elements compete), ties go to the
// first element in row-major window order on both backends, and the forward records the
// winner's index inside its plane so the backward routes dy there.
// Bytes: max pool reads x once and writes y and the int32 index (about 4 + 8 / stride^2 bytes
// per input element), K*K compares per output; average pool reads x once (4 bytes/element).
// Tests: tests/ops_conv_test.cpp (gradient checks; CUDA vs CPU).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_POOL_KERNELS                                                                           \
  /* x (N*C, H, W) -> y, argmax (N*C, HO, WO); argmax holds h * W + w of the winner */             \
  void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h,    \
                          int64_t w, int64_t ho, int64_t wo, int64_t kernel, int64_t stride,       \
                          int64_t pad);                                                            \
  /* dx += dy routed to argmax.  dy, argmax (N*C, HO, WO), dx (N*C, H, W) */                         \
  void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, int64_t planes,      \
                           int64_t h, int64_t w, int64_t ho, int64_t wo, int64_t kernel,           \
                           int64_t stride, int64_t pad);                                           \
  /* y[p] = mean of x[p, :].  x (N*C, HW) -> y (N*C) */                                            \
  void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw);              \
  /* dx[p, :] += dy[p] / HW */                                                                     \
  void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw);

namespace kernels::cpu {
TS_POOL_KERNELS
}
namespace kernels::cuda {
TS_POOL_KERNELS
}
#undef TS_POOL_KERNELS

// Costs for the profiler (kernels/common/cost.h).
namespace kernels {
TS_KERNEL_COST(max_pool2d_forward, const float*, float*, int32_t*, int64_t planes, int64_t h, int64_t w,
               int64_t ho, int64_t wo, int64_t kernel, int64_t, int64_t) {
  return {4.0 * planes * h * w + 8.0 * planes * ho * wo, 1.0 * planes * ho * wo * kernel * kernel};
}
TS_KERNEL_COST(max_pool2d_backward, const float*, const int32_t*, float*, int64_t planes, int64_t h, int64_t w,
               int64_t ho, int64_t wo, int64_t, int64_t, int64_t) {
  return {8.0 * planes * ho * wo + 8.0 * planes * h * w, 1.0 * planes * ho * wo};
}
TS_KERNEL_COST(global_avg_pool_forward, const float*, float*, int64_t planes, int64_t hw) {
  return {4.0 * planes * hw + 4.0 * planes, 1.0 * planes * hw};
}
TS_KERNEL_COST(global_avg_pool_backward, const float*, float*, int64_t planes, int64_t hw) {
  return {8.0 * planes * hw + 4.0 * planes, 1.0 * planes * hw};
}
}  // namespace kernels
