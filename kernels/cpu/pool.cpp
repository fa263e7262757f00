// CPU reference of kernels/pool.h: OpenMP over (image, channel) planes, so every thread owns
// the output and gradient planes it writes and the backward needs no atomics.
#include "kernels/pool.h"

#include <algorithm>

namespace kernels::cpu {

void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h, int64_t w,
                        int64_t ho, int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
  // Each window clipped to the image before its scan (rows [r0, r1), columns [c0, c1)), so the
  // scan has no bounds tests: the per-element tests of a scan over the padded window made this
  // kernel 5% of the BYOL demo's step.
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* in = x + p * h * w;
    for (int64_t i = 0; i < ho; ++i) {
      const int64_t r0 = std::max<int64_t>(0, i * stride - pad), r1 = std::min<int64_t>(h, i * stride - pad + kernel);
      for (int64_t j = 0; j < wo; ++j) {
        const int64_t c0 = std::max<int64_t>(0, j * stride - pad), c1 = std::min<int64_t>(w, j * stride - pad + kernel);
        // The first in-image element seeds the max, so padding never wins; '>' keeps the first
        // of equal values (the CUDA kernel scans in the same order).
        int64_t best = r0 * w + c0;
        float best_v = in[best];
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t col = c0; col < c1; ++col)
            if (in[r * w + col] > best_v) {
              best = r * w + col;
              best_v = in[best];
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
  if (hw == 1) {  // 1x1 maps (the demo's last stage): the mean is the value
    std::copy(x, x + planes, y);
    return;
  }
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
