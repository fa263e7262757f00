// CPU reference of kernels/pool.h: OpenMP over (image, channel) planes, so every thread owns
// the output and gradient planes it writes and the backward needs no atomics.
#include "kernels/pool.h"

namespace kernels::cpu {

void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h, int64_t w,
                        int64_t ho, int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* in = x + p * h * w;
    for (int64_t i = 0; i < ho; ++i) {
      for (int64_t j = 0; j < wo; ++j) {
        // The first in-image element seeds the max, so padding never wins; '>' keeps the first
        // of equal values (the CUDA kernel scans in the same order).
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
        y[(p * ho + i) * wo + j] = best_v;
        argmax[(p * ho + i) * wo + j] = static_cast<int32_t>(best);
      }
    }
  }
}

void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, int64_t planes, int64_t h, int64_t w,
                         int64_t ho, int64_t wo, int64_t /*kernel*/, int64_t /*stride*/, int64_t /*pad*/) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    float* out = dx + p * h * w;
    for (int64_t k = p * ho * wo; k < (p + 1) * ho * wo; ++k) out[argmax[k]] += dy[k];
  }
}

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  const float inv = 1.0f / static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* in = x + p * hw;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < hw; ++k) s += in[k];
    y[p] = s * inv;
  }
}

void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  const float inv = 1.0f / static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float g = dy[p] * inv;
    float* out = dx + p * hw;
#pragma omp simd
    for (int64_t k = 0; k < hw; ++k) out[k] += g;
  }
}

}  // namespace kernels::cpu
