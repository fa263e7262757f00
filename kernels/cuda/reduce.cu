// CUDA twin of kernels/reduce.h.
// sum: up to kSumOneBlock elements, one block of 1024 threads (each sums a strided share,
// warps reduce by shuffles, warp 0 sums the 32 warp totals). Larger tensors: a first launch of
// B = min(kSumMaxBlocks, n / kSumOneBlock rounded up) blocks writes one partial per block (the
// same block reduction over a grid-stride share), then one block sums the B partials in the
// same fixed order. B depends on n only, never on the GPU, and there are no atomics, so the
// result is the same on every run and every device. One block runs on one SM of the 132 of
// an H100 / H200; the first pass spreads a large tensor over all of them.
// Cost: kernels/reduce.h (4 n bytes read, n FLOPs; 4 B bytes of partials between the passes).
// Tests: tests/ops_reduce_test.cpp (CUDA vs CPU), tests/cuda_review_test.cpp (large sums against
// a float64 reference, run to run bit-identity).
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/reduce.h"

namespace kernels::cuda {

namespace {

constexpr int kSumThreads = 1024;
constexpr int64_t kSumOneBlock = 65536;  // at most this many elements: one block, one launch
constexpr int kSumMaxBlocks = 256;       // ~ one wave of 1024-thread blocks on an H100 / H200

// The partial sums between the two passes. Every kernel runs on the engine's one stream
// (kernels/cuda/runtime.h), so two sums never use them at the same time.
__device__ float sum_partials[kSumMaxBlocks];

// The block's total, valid in thread 0: warp shuffles, then warp 0 over the 32 warp totals.
__device__ float block_total(float acc) {
  __shared__ float warp_totals[kSumThreads / 32];
  acc = warp_sum(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_totals[warp] = acc;
  __syncthreads();
  float total = 0.0f;
  if (warp == 0) total = warp_sum(warp_totals[lane]);
  return total;
}

// x (n) -> y (1) = scale * sum, in one block.
__global__ void __launch_bounds__(kSumThreads) sum_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                          int64_t n, float scale) {
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) acc += x[i];
  const float total = block_total(acc);
  if (threadIdx.x == 0) y[0] = scale * total;
}

// First pass: block b sums x[i] for i = b * 1024 + t, stepping by gridDim.x * 1024.
__global__ void __launch_bounds__(kSumThreads) sum_partials_kernel(const float* __restrict__ x, int64_t n) {
  float acc = 0.0f;
  const int64_t step = int64_t(gridDim.x) * kSumThreads;
  for (int64_t i = blockIdx.x * int64_t(kSumThreads) + threadIdx.x; i < n; i += step) acc += x[i];
  const float total = block_total(acc);
  if (threadIdx.x == 0) sum_partials[blockIdx.x] = total;
}

// Second pass: one block over the `blocks` partials, y = scale * their sum.
__global__ void __launch_bounds__(kSumThreads) sum_final_kernel(float* __restrict__ y, int blocks, float scale) {
  const float total = block_total(threadIdx.x < blocks ? sum_partials[threadIdx.x] : 0.0f);
  if (threadIdx.x == 0) y[0] = scale * total;
}

__global__ void sum_backward_kernel(const float* dy, float* dx, int64_t n, float scale) {
  const float g = scale * dy[0];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] += g;
}

}  // namespace

void sum_forward(const float* x, float* y, int64_t n, float scale) {
  if (n <= kSumOneBlock) {
    sum_kernel<<<1, kSumThreads, 0, runtime().stream>>>(x, y, n, scale);
    KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t wanted = (n + kSumOneBlock - 1) / kSumOneBlock;
  const int blocks = static_cast<int>(wanted < kSumMaxBlocks ? wanted : kSumMaxBlocks);
  sum_partials_kernel<<<blocks, kSumThreads, 0, runtime().stream>>>(x, n);
  KERNEL_LAUNCH_CHECK();
  sum_final_kernel<<<1, kSumThreads, 0, runtime().stream>>>(y, blocks, scale);
  KERNEL_LAUNCH_CHECK();
}

void sum_backward(const float* dy, float* dx, int64_t n, float scale) {
  if (n == 0) return;
  sum_backward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(dy, dx, n, scale);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
