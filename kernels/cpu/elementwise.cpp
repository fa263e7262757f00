// CPU reference of kernels/elementwise.h: OpenMP-parallel loops the compiler vectorises.
#include "kernels/elementwise.h"

#include "kernels/common/activation.h"

namespace kernels::cpu {

void fill(float* x, int64_t n, float value) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = value;
}

void add_forward(const float* a, const float* b, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void scale_forward(const float* x, float* y, int64_t n, float s) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

void scale_accumulate(const float* dy, float* dx, int64_t n, float s) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] += s * dy[i];
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = leaky_relu(x[i], slope);
}

void leaky_relu_backward(const float* y, const float* dy, float* dx, int64_t n, float slope, bool accumulate) {
  if (accumulate) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * leaky_relu_grad(y[i], slope);
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * leaky_relu_grad(y[i], slope);
  }
}

}  // namespace kernels::cpu
