// 2-D convolution (cross-correlation, as every framework computes it), NCHW float32.
//
//   y[n,o,i,j] = b[o] + sum_{c,u,v} w[o,c,u,v] * x[n, c, i*stride - pad + u, j*stride - pad + v]
//
// with zero padding. FLOPs: 2 N O HO WO C KH KW for the forward, the same again for each of the
// data and filter gradients. Bytes: x, w and y once each (plus, on the CPU, the im2col columns:
// C KH KW HO WO floats per image written and read again).
// CPU: im2col + OpenBLAS sgemm over a chunk of images at once (kernels/cpu/conv.cpp says why).
// CUDA: cuDNN, one algorithm per shape chosen once and cached (kernels/cuda/conv.cu).
// CPU fast tier: oneDNN, primitives made once per shape and cached (kernels/onednn/conv.cpp);
// defined only in builds with oneDNN (TESSERA_ONEDNN=1); engine/ops_conv.cpp picks the tier.
// Scratch memory comes from the caller: conv2d_workspace_size() says how many bytes the forward
// or the backward of a shape needs; the caller passes at least that, and the memory is dead
// when the call returns (the engine reuses one region for every op: engine/workspace.h).
// Tests: tests/ops_conv_test.cpp (gradient checks; CUDA vs CPU where a GPU exists),
// tests/conv_fast_test.cpp (oneDNN vs the reference on every conv shape of the models).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/cost.h"

namespace kernels {

// The shape of one convolution. Plain sizes, so both backends and the engine share it.
struct Conv2dShape {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input (N, C, H, W)
  int64_t o = 0, kh = 0, kw = 0;       // weight (O, C, KH, KW)
  int64_t stride = 1, pad = 0;
  int64_t ho = 0, wo = 0;              // output (N, O, HO, WO), HO = (H + 2 pad - KH) / stride + 1

  bool operator==(const Conv2dShape& s) const {
    return n == s.n && c == s.c && h == s.h && w == s.w && o == s.o && kh == s.kh && kw == s.kw &&
           stride == s.stride && pad == s.pad && ho == s.ho && wo == s.wo;
  }
};

// Which call a scratch size is for: the forward (enough for a no-grad forward), or the backward
// (data and filter gradients; on cuDNN often much more than the forward).
enum class ConvPass { Forward, Backward };

}  // namespace kernels

#define TS_CONV_KERNELS                                                                          \
  /* Bytes of scratch the forward or the backward of this shape needs (CUDA: also picks and */ \
  /* caches the cuDNN algorithms of the shape, so the first call per shape costs a query). */   \
  void conv2d_workspace_size(const ::kernels::Conv2dShape& s, ::kernels::ConvPass pass,         \
                             size_t* bytes);                                                    \
  /* y = conv(x, w) + b (overwrites y).  x (N, C, H, W), w (O, C, KH, KW), b (O) or nullptr, */ \
  /* y (N, O, HO, WO) */                                                                        \
  void conv2d_forward(const ::kernels::Conv2dShape& s, const float* x, const float* w,          \
                      const float* b, float* y, void* workspace, size_t workspace_bytes);       \
  /* Gradients into each of dx (N, C, H, W), dw (O, C, KH, KW), db (O) that is not nullptr: */ \
  /* dw, db accumulated (+=); dx too when accumulate_dx, else overwritten (its old contents */   \
  /* never read: a new gradient needs no zero fill).  x, w as in the forward, dy (N, O, HO, WO) */ \
  void conv2d_backward(const ::kernels::Conv2dShape& s, const float* x, const float* w,         \
                       const float* dy, float* dx, float* dw, float* db, bool accumulate_dx,    \
                       void* workspace, size_t workspace_bytes);

namespace kernels::cpu {
TS_CONV_KERNELS
// db (O) += sum over n, p of dy[n, o, p], dy (N, O, HO, WO): the bias gradient, one pass over dy,
// summed in double per channel so the result does not depend on N. Also what the fast tier
// runs for the bias (oneDNN computes it only together with the filter gradient).
void conv2d_bias_gradient(const ::kernels::Conv2dShape& s, const float* dy, float* db);
}
namespace kernels::cuda {
TS_CONV_KERNELS
}
namespace kernels::onednn {
TS_CONV_KERNELS
}
#undef TS_CONV_KERNELS

// Costs for the profiler (kernels/common/cost.h): x, w, y once each (the accumulated
// gradients read and written), without the CPU's im2col traffic, so a rate compares the
// algorithm with the device whatever the implementation.
namespace kernels {
TS_KERNEL_COST(conv2d_forward, const Conv2dShape& s, const float*, const float*, const float* b, float*, void*,
               size_t) {
  const double x = s.n * s.c * s.h * s.w, w = s.o * s.c * s.kh * s.kw, y = s.n * s.o * s.ho * s.wo;
  return {4.0 * (x + w + y + (b ? s.o : 0)), 2.0 * y * s.c * s.kh * s.kw + (b ? y : 0.0)};
}
TS_KERNEL_COST(conv2d_backward, const Conv2dShape& s, const float*, const float*, const float*, float* dx,
               float* dw, float* db, bool, void*, size_t) {
  const double x = s.n * s.c * s.h * s.w, w = s.o * s.c * s.kh * s.kw, y = s.n * s.o * s.ho * s.wo;
  const double gemm = 2.0 * y * s.c * s.kh * s.kw;
  double bytes = 4.0 * y, flops = 0;  // dy read once
  if (dx) bytes += 4.0 * (w + 2 * x), flops += gemm;
  if (dw) bytes += 4.0 * (x + 2 * w), flops += gemm;
  if (db) bytes += 8.0 * s.o, flops += y;
  return {bytes, flops};
}
}  // namespace kernels
