// CUDA twin of kernels/l2_normalize.h: one warp per row, shuffle reductions (kernels/cuda/warp.cuh).
#include "kernels/common/l2norm.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/l2_normalize.h"

namespace kernels::cuda {

namespace {

__global__ void l2_normalize_forward_kernel(const float* x, float* y, float* norm, int64_t n, int64_t d,
                                            float eps) {
  for (int64_t i = blockIdx.x * int64_t(kWarpRows) + threadIdx.y; i < n; i += int64_t(gridDim.x) * kWarpRows) {
    const float* xi = x + i * d;
    float sum_sq = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += 32) sum_sq += xi[j] * xi[j];
    const float row_norm = sqrtf(warp_sum(sum_sq));
    const float inv = 1.0f / l2_denominator(row_norm, eps);
    for (int64_t j = threadIdx.x; j < d; j += 32) y[i * d + j] = xi[j] * inv;
    if (threadIdx.x == 0) norm[i] = row_norm;
  }
}

__global__ void l2_normalize_backward_kernel(const float* y, const float* norm, const float* dy, float* dx,
                                             int64_t n, int64_t d, float eps) {
  for (int64_t i = blockIdx.x * int64_t(kWarpRows) + threadIdx.y; i < n; i += int64_t(gridDim.x) * kWarpRows) {
    const float *yi = y + i * d, *dyi = dy + i * d;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += 32) dot += yi[j] * dyi[j];
    dot = warp_sum(dot);
    for (int64_t j = threadIdx.x; j < d; j += 32) dx[i * d + j] += l2_normalize_grad(yi[j], dyi[j], dot, norm[i], eps);
  }
}

}  // namespace

void l2_normalize_forward(const float* x, float* y, float* norm, int64_t n, int64_t d, float eps) {
  if (n == 0) return;
  l2_normalize_forward_kernel<<<row_blocks(n), dim3(32, kWarpRows), 0, runtime().stream>>>(x, y, norm, n, d, eps);
  KERNEL_LAUNCH_CHECK();
}

void l2_normalize_backward(const float* y, const float* norm, const float* dy, float* dx, int64_t n, int64_t d,
                           float eps) {
  if (n == 0) return;
  l2_normalize_backward_kernel<<<row_blocks(n), dim3(32, kWarpRows), 0, runtime().stream>>>(y, norm, dy, dx, n, d,
                                                                                           eps);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
