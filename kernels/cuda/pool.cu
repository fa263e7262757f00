// CUDA twin of kernels/pool.h.
// Max pooling: one thread per output scans its window in the CPU's order (rows, then columns,
// '>' keeps the first maximum, padding never a candidate), so both backends pick the same
// winner. The backward gathers instead of scattering: one thread per input element sums dy of
// the (few) windows whose winner it is, so there are no atomics and the sums are
// deterministic. Global average pooling: one warp per (image, channel) plane.
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/pool.h"

namespace kernels::cuda {
namespace {

__global__ void max_pool_forward_kernel(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h,
                                        int64_t w, int64_t ho, int64_t wo, int64_t kernel, int64_t stride,
                                        int64_t pad) {
  const int64_t total = planes * ho * wo;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = k % wo, i = (k / wo) % ho, p = k / (ho * wo);
    const float* in = x + p * h * w;
    int64_t best = -1;
    float best_v = 0.0f;
    for (int64_t u = 0; u < kernel; ++u) {
      const int64_t r = i * stride - pad + u;
      if (r < 0 || r >= h) continue;
      for (int64_t v = 0; v < kernel; ++v) {
        const int64_t col = j * stride - pad + v;
        if (col < 0 || col >= w) continue;
        const float val = in[r * w + col];
        if (best < 0 || val > best_v) {
          best = r * w + col;
          best_v = val;
        }
      }
    }
    y[k] = best_v;
    argmax[k] = static_cast<int32_t>(best);
  }
}

__global__ void max_pool_backward_kernel(const float* dy, const int32_t* argmax, float* dx, int64_t planes, int64_t h,
                                         int64_t w, int64_t ho, int64_t wo, int64_t kernel, int64_t stride,
                                         int64_t pad) {
  const int64_t total = planes * h * w;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = k % w, r = (k / w) % h, p = k / (h * w);
    // Outputs (i, j) whose window covers (r, col): i*stride - pad <= r <= i*stride - pad + kernel - 1.
    const int64_t i_lo = max(int64_t(0), (r + pad - kernel + stride) / stride);
    const int64_t i_hi = min(ho - 1, (r + pad) / stride);
    const int64_t j_lo = max(int64_t(0), (col + pad - kernel + stride) / stride);
    const int64_t j_hi = min(wo - 1, (col + pad) / stride);
    const int32_t self = static_cast<int32_t>(r * w + col);
    float g = 0.0f;
    for (int64_t i = i_lo; i <= i_hi; ++i)
      for (int64_t j = j_lo; j <= j_hi; ++j) {
        const int64_t o = (p * ho + i) * wo + j;
        if (argmax[o] == self) g += dy[o];
      }
    dx[k] += g;
  }
}

__global__ void avg_pool_forward_kernel(const float* x, float* y, int64_t planes, int64_t hw) {
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < planes; p += warps) {
    float s = 0.0f;
    for (int64_t k = lane; k < hw; k += 32) s += x[p * hw + k];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) y[p] = s / static_cast<float>(hw);
  }
}

__global__ void avg_pool_backward_kernel(const float* dy, float* dx, int64_t planes, int64_t hw) {
  const int64_t total = planes * hw;
  const float inv = 1.0f / static_cast<float>(hw);
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x)
    dx[k] += dy[k / hw] * inv;
}

}  // namespace

void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h, int64_t w, int64_t ho,
                        int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
  const int64_t total = planes * ho * wo;
  if (total == 0) return;
  max_pool_forward_kernel<<<grid_for(total), 256, 0, runtime().stream>>>(x, y, argmax, planes, h, w, ho, wo, kernel,
                                                                         stride, pad);
  KERNEL_LAUNCH_CHECK();
}

void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, int64_t planes, int64_t h, int64_t w,
                         int64_t ho, int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
  const int64_t total = planes * h * w;
  if (total == 0) return;
  max_pool_backward_kernel<<<grid_for(total), 256, 0, runtime().stream>>>(dy, argmax, dx, planes, h, w, ho, wo,
                                                                          kernel, stride, pad);
  KERNEL_LAUNCH_CHECK();
}

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  if (planes == 0) return;
  avg_pool_forward_kernel<<<grid_for(planes * 32), 256, 0, runtime().stream>>>(x, y, planes, hw);
  KERNEL_LAUNCH_CHECK();
}

void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  const int64_t total = planes * hw;
  if (total == 0) return;
  avg_pool_backward_kernel<<<grid_for(total), 256, 0, runtime().stream>>>(dy, dx, planes, hw);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
