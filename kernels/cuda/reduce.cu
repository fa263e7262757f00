// CUDA twin of kernels/reduce.h.
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/reduce.h"

namespace kernels::cuda {

namespace {

constexpr int kSumThreads = 1024;

// One block: each thread sums a strided share, warps reduce by shuffles, warp 0 sums the
// 32 warp totals. The order is fixed, so the result is the same on every run.
__global__ void sum_kernel(const float* x, float* y, int64_t n, float scale) {
  __shared__ float warp_totals[kSumThreads / 32];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) acc += x[i];
  acc = warp_sum(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_totals[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float total = warp_sum(warp_totals[lane]);
    if (lane == 0) y[0] = scale * total;
  }
}

__global__ void sum_backward_kernel(const float* dy, float* dx, int64_t n, float scale) {
  const float g = scale * dy[0];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] += g;
}

}  // namespace

void sum_forward(const float* x, float* y, int64_t n, float scale) {
  sum_kernel<<<1, kSumThreads, 0, runtime().stream>>>(x, y, n, scale);
  KERNEL_LAUNCH_CHECK();
}

void sum_backward(const float* dy, float* dx, int64_t n, float scale) {
  if (n == 0) return;
  sum_backward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(dy, dx, n, scale);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
