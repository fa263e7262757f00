// Batch normalisation over the channels of NCHW float32 (batch_norm1d is H = W = 1).
//
//   train: mean_c, var_c over (N, H, W) of the batch (biased var normalises);
//          y = gamma_c (x - mean_c) invstd_c + beta_c, invstd_c = 1 / sqrt(var_c + eps);
//          running_mean = (1 - momentum) running_mean + momentum mean_c,
//          running_var  = (1 - momentum) running_var  + momentum var_c * M / (M - 1)  (unbiased,
//          M = N H W): PyTorch's conventions, and cuDNN's (its exponentialAverageFactor is
//          PyTorch's momentum). num_batches_tracked += 1 is not done here, one launch per layer
//          and forward for one float: the engine's graph adds every layer's count of the step
//          with one batch_norm_count_batches launch (engine/autograd.h).
//   eval:  the same y with running_mean / running_var in place of the batch statistics.
// Bytes: forward reads x twice (statistics, then y) and writes y: 12 per element; backward
// reads x and dy twice and adds into dx: about 20 per element. FLOPs: about 10 per element
// each way: these kernels are bound by memory bandwidth.
// The train forward saves mean_c and invstd_c (C floats each, from the caller's workspace, each
// its own aligned allocation as cuDNN expects of resultSaveMean / resultSaveInvVariance) for
// the backward.
// Backward outputs: an input that needs no gradient still gets a buffer (the kernels write all
// three), which is scratch: `accumulate` says which outputs add into what they hold (the
// engine's gradients) and which are overwritten (scratch is never read, so it needs no
// initialising; cuDNN, where it runs, has beta = 0 there).
// Tests: tests/ops_norm_test.cpp (gradient checks, running statistics; CUDA vs CPU),
// tests/batch_norm_kernels_test.cpp (overwritten outputs, batch counts, segments, both CUDA
// implementations of each pass against the CPU).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

namespace kernels {

// Bits of a backward's `accumulate` argument.
enum BnAccumulate : uint32_t {
  kBnAccumulateDx = 1,
  kBnAccumulateDgamma = 2,
  kBnAccumulateDbeta = 4,
  kBnAccumulateAll = 7,
};

// counter[i][0] += add[i] for i < count: the num_batches_tracked of every BatchNorm layer a
// graph ran in train mode, passed by value (no upload inside a step; 1.5 KiB of kernel
// parameters, under the 4 KiB limit).
struct BatchCounters {
  static constexpr int kMax = 128;
  float* counter[kMax];
  float add[kMax];
  int32_t count;
};

// Floats of scratch the CUDA kernels need (tessera's train forward, both backwards): (C,
// segments, 2) partial sums, where the N images of a channel are cut into segments, each
// reduced by its own CUDA block of 256 threads. A segment holds whole images and about
// N C HW / kBnTargetBlocks elements, kept between kBnMinSegmentElements and
// kBnMaxSegmentElements: about two waves of blocks on an H200 (132 SMs x 8 blocks of 256
// threads) where the layer is large enough; with one 16384-element segment size for every shape, ncu measured the 64-channel
// layers of ResNet-18 CIFAR b256 at 72% of DRAM bandwidth but the 256-channel ones (256 blocks)
// at 20% (docs/gpu-log.md). A function of the shape only, so the sums are reproducible.
constexpr int64_t kBnTargetBlocks = 2048, kBnMinSegmentElements = 1024, kBnMaxSegmentElements = 16384;
inline int64_t batch_norm_images_per_segment(int64_t n, int64_t c, int64_t hw) {
  if (n < 1 || hw < 1) return 1;
  const int64_t segments_wanted = c > 0 ? (kBnTargetBlocks + c - 1) / c : 1;
  int64_t elements = (n * hw + segments_wanted - 1) / segments_wanted;
  elements = elements < kBnMinSegmentElements ? kBnMinSegmentElements : elements;
  elements = elements > kBnMaxSegmentElements ? kBnMaxSegmentElements : elements;
  const int64_t images = (elements + hw - 1) / hw;
  return images < n ? images : n;
}
inline int64_t batch_norm_segments(int64_t n, int64_t c, int64_t hw) {
  const int64_t per = batch_norm_images_per_segment(n, c, hw);
  return (n + per - 1) / per;
}
inline int64_t batch_norm_scratch(int64_t n, int64_t c, int64_t hw) {
  return 2 * c * batch_norm_segments(n, c, hw);
}

}  // namespace kernels

#define TS_BATCH_NORM_KERNELS                                                                    \
  /* x, y (N, C, HW); gamma, beta, running_mean, running_var, save_mean, save_invstd (C) */      \
  /* scratch: batch_norm_scratch(n, c, hw) floats on the device (unused on the CPU). */         \
  void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y,  \
                                float* running_mean, float* running_var, float* save_mean,         \
                                float* save_invstd, int64_t n, int64_t c, int64_t hw,             \
                                float momentum, float eps, float* scratch);                       \
  void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta,             \
                               const float* running_mean, const float* running_var, float* y,    \
                               int64_t n, int64_t c, int64_t hw, float eps);                      \
  /* Gradients of the train forward into dx (N, C, HW), dgamma, dbeta (C), all three required; */ \
  /* each added (+=) or written (=) as its BnAccumulate bit says; scratch as above. */           \
  void batch_norm_backward_train(const float* x, const float* dy, const float* gamma,             \
                                 const float* save_mean, const float* save_invstd, float* dx,     \
                                 float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,   \
                                 float eps, uint32_t accumulate, float* scratch);                 \
  /* Gradients of the eval forward (statistics are constants), likewise. */                      \
  void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma,              \
                                const float* running_mean, const float* running_var, float* dx,  \
                                float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,   \
                                float eps, uint32_t accumulate, float* scratch);                 \
  /* num_batches_tracked: counters[i] += add[i] (see BatchCounters). */                          \
  void batch_norm_count_batches(::kernels::BatchCounters counters);

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
               float*, int64_t n, int64_t c, int64_t hw, float, float, float*) {
  return {12.0 * n * c * hw, 10.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_forward_eval, const float*, const float*, const float*, const float*, const float*,
               float*, int64_t n, int64_t c, int64_t hw, float) {
  return {8.0 * n * c * hw, 2.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_train, const float*, const float*, const float*, const float*, const float*,
               float*, float*, float*, int64_t n, int64_t c, int64_t hw, float, uint32_t, float*) {
  return {20.0 * n * c * hw, 10.0 * n * c * hw};
}
TS_KERNEL_COST(batch_norm_backward_eval, const float*, const float*, const float*, const float*, const float*,
               float*, float*, float*, int64_t n, int64_t c, int64_t hw, float, uint32_t, float*) {
  return {20.0 * n * c * hw, 6.0 * n * c * hw};
}
}  // namespace kernels
