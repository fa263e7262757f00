// CPU reference of kernels/l2_normalize.h: OpenMP over rows, row sums in double.
#include "kernels/l2_normalize.h"

#include <cmath>

#include "kernels/common/l2norm.h"

namespace kernels::cpu {

void l2_normalize_forward(const float* x, float* y, float* norm, int64_t n, int64_t d, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    double sum_sq = 0.0;
    for (int64_t j = 0; j < d; ++j) sum_sq += static_cast<double>(xi[j]) * xi[j];
    norm[i] = static_cast<float>(std::sqrt(sum_sq));
    const float inv = 1.0f / l2_denominator(norm[i], eps);
    for (int64_t j = 0; j < d; ++j) y[i * d + j] = xi[j] * inv;
  }
}

void l2_normalize_backward(const float* y, const float* norm, const float* dy, float* dx, int64_t n, int64_t d,
                           float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float *yi = y + i * d, *dyi = dy + i * d;
    double dot = 0.0;
    for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(yi[j]) * dyi[j];
    for (int64_t j = 0; j < d; ++j)
      dx[i * d + j] += l2_normalize_grad(yi[j], dyi[j], static_cast<float>(dot), norm[i], eps);
  }
}

}  // namespace kernels::cpu
