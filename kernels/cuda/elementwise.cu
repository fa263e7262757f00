// CUDA twin of kernels/elementwise.h: grid-stride loops, one element per thread step.
#include "kernels/common/activation.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/elementwise.h"

namespace kernels::cuda {

namespace {

__global__ void fill_kernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = value;
}

__global__ void add_forward_kernel(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void scale_forward_kernel(const float* x, float* y, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = s * x[i];
}

__global__ void scale_accumulate_kernel(const float* dy, float* dx, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] += s * dy[i];
}

__global__ void leaky_relu_forward_kernel(const float* x, float* y, int64_t n, float slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = leaky_relu(x[i], slope);
}

// y is the forward's output (its sign is the input's, slope >= 0), so an in-place relu_ that
// overwrote its input can still be differentiated.
__global__ void leaky_relu_backward_kernel(const float* y, const float* dy, float* dx, int64_t n,
                                           float slope, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = dy[i] * leaky_relu_grad(y[i], slope);
    dx[i] = accumulate ? dx[i] + g : g;
  }
}

}  // namespace

void fill(float* x, int64_t n, float value) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(x, n, value);
  KERNEL_LAUNCH_CHECK();
}

void add_forward(const float* a, const float* b, float* y, int64_t n) {
  if (n == 0) return;
  add_forward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(a, b, y, n);
  KERNEL_LAUNCH_CHECK();
}

void scale_forward(const float* x, float* y, int64_t n, float s) {
  if (n == 0) return;
  scale_forward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(x, y, n, s);
  KERNEL_LAUNCH_CHECK();
}

void scale_accumulate(const float* dy, float* dx, int64_t n, float s) {
  if (n == 0) return;
  scale_accumulate_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(dy, dx, n, s);
  KERNEL_LAUNCH_CHECK();
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
  if (n == 0) return;
  leaky_relu_forward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(x, y, n, slope);
  KERNEL_LAUNCH_CHECK();
}

void leaky_relu_backward(const float* y, const float* dy, float* dx, int64_t n, float slope, bool accumulate) {
  if (n == 0) return;
  leaky_relu_backward_kernel<<<grid_for(n), 256, 0, runtime().stream>>>(y, dy, dx, n, slope, accumulate);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
