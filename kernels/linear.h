// Fully connected layer: y = x w^T + b, and its backward passes.
//   forward          2 N IN OUT FLOPs (one GEMM) + N OUT for the bias; reads x, w, b, writes y.
//   backward_input   dx += dy w:    2 N IN OUT FLOPs (one GEMM, beta = 1).
//   backward_weight  dw += dy^T x:  2 N IN OUT FLOPs (one GEMM, beta = 1).
//   backward_bias    db += column sums of dy: N OUT FLOPs, 4 N OUT bytes read.
// The GEMMs go to OpenBLAS (cblas_sgemm) on the CPU, oneDNN's sgemm for the two gradients on
// the CPU's fast tier, and cuBLAS (cublasSgemm; FP32 math unless --math tf32) on CUDA; the bias kernels are
// hand-written. Gradients accumulate (+=, GEMM beta = 1) because a
// weight can be used twice in one step (the two BYOL views through one projector).
// Tests: tests/ops_basic_test.cpp (gradient checks of every input, N = 1, large IN; CUDA vs
// CPU where a GPU exists), tests/autograd_test.cpp (an MLP against hand-derived gradients).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_LINEAR_KERNELS                                                                      \
  /* y = x w^T + b.  x (n, in), w (out, in), b (out) or nullptr, y (n, out) */                 \
  void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t n,     \
                      int64_t in, int64_t out);                                                \
  /* dx += dy w.  dy (n, out), w (out, in), dx (n, in) */                                      \
  void linear_backward_input(const float* dy, const float* w, float* dx, int64_t n, int64_t in, \
                             int64_t out);                                                     \
  /* dw += dy^T x.  dy (n, out), x (n, in), dw (out, in) */                                    \
  void linear_backward_weight(const float* dy, const float* x, float* dw, int64_t n,           \
                              int64_t in, int64_t out);                                        \
  /* db[o] += sum_i dy[i, o].  dy (n, out), db (out) */                                        \
  void linear_backward_bias(const float* dy, float* db, int64_t n, int64_t out);

namespace kernels::cpu {
TS_LINEAR_KERNELS
}
namespace kernels::cuda {
TS_LINEAR_KERNELS
}
#undef TS_LINEAR_KERNELS

// The CPU fast tier's twins of the two weight-sized GEMMs (kernels/onednn/linear.cpp, oneDNN's
// sgemm; defined only in builds with oneDNN). The forward stays on OpenBLAS on both tiers: its
// x w^T (a transposed B) ran slower on oneDNN's sgemm at IN = 1024 (bench/RESULTS.md).
namespace kernels::onednn {
void linear_backward_input(const float* dy, const float* w, float* dx, int64_t n, int64_t in, int64_t out);
void linear_backward_weight(const float* dy, const float* x, float* dw, int64_t n, int64_t in, int64_t out);
}

// Costs for the profiler (kernels/common/cost.h): each operand read once, the output written
// once (read too where it accumulates).
namespace kernels {
TS_KERNEL_COST(linear_forward, const float*, const float*, const float* b, float*, int64_t n, int64_t in,
               int64_t out) {
  return {4.0 * (n * in + out * in + (b ? out : 0) + n * out), 2.0 * n * in * out + (b ? 1.0 * n * out : 0.0)};
}
TS_KERNEL_COST(linear_backward_input, const float*, const float*, float*, int64_t n, int64_t in, int64_t out) {
  return {4.0 * (n * out + out * in + 2 * n * in), 2.0 * n * in * out};
}
TS_KERNEL_COST(linear_backward_weight, const float*, const float*, float*, int64_t n, int64_t in, int64_t out) {
  return {4.0 * (n * out + n * in + 2 * out * in), 2.0 * n * in * out};
}
TS_KERNEL_COST(linear_backward_bias, const float*, float*, int64_t n, int64_t out) {
  return {4.0 * (n * out + 2 * out), 1.0 * n * out};
}
}  // namespace kernels
