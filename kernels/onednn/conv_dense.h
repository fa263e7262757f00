// The fast tier's dense-GEMM convolution for maps within the kernel's reach
// (kernels/onednn/conv_dense.cpp says what and why). Internal to kernels/onednn: conv.cpp
// routes a shape here under the measured routing (conv2d_runs_dense in onednn.h).
#pragma once

#include <cstddef>

#include "kernels/conv.h"

namespace kernels::onednn {

// True when every output pixel's window covers the whole input map, so that the convolution
// is one dense linear map per sample with no product over padding.
bool conv2d_is_dense(const Conv2dShape& s);

// Scratch of either pass, in bytes: a table of where w's taps sit and one (O HO WO) x (C H W)
// float matrix.
size_t dense_workspace_size(const Conv2dShape& s);

// As kernels/conv.h's conv2d_forward / conv2d_backward; `scratch`: dense_workspace_size(s)
// bytes, aligned for a float. x (N, C, H, W), w (O, C, KH, KW), b (O) or nullptr, y / dy (N, O, HO, WO).
void dense_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* scratch);
void dense_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                    float* db, bool accumulate_dx, void* scratch);

}  // namespace kernels::onednn
