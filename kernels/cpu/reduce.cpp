// CPU reference of kernels/reduce.h.
#include "kernels/reduce.h"

namespace kernels::cpu {

void sum_forward(const float* x, float* y, int64_t n, float scale) {
  double total = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += x[i];
  y[0] = static_cast<float>(scale * total);
}

void sum_backward(const float* dy, float* dx, int64_t n, float scale) {
  const float g = scale * dy[0];
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] += g;
}

}  // namespace kernels::cpu
