// The per-channel sums BatchNorm's backward needs, shared by the plain kernel
// (kernels/cpu/batch_norm.cpp) and SyncBN's (kernels/cpu/sync_batch_norm.cpp), which all-reduces
// them across ranks before using them. Cost: one read of x and dy for the channel.
#pragma once

#include <cstdint>

namespace kernels::cpu {

// x, dy: (N, C, HW); channel ch with its batch mean and inverse std.
// *sum_dy = sum dy, *sum_dy_xhat = sum dy * (x - mean) * invstd, in double across rows.
inline void batch_norm_channel_sums(const float* x, const float* dy, float mean, float invstd, int64_t n, int64_t c,
                                    int64_t hw, int64_t ch, double* sum_dy, double* sum_dy_xhat) {
  double s_all = 0, sx_all = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + (i * c + ch) * hw;
    const float* gr = dy + (i * c + ch) * hw;
    float s = 0, sx = 0;
#pragma omp simd reduction(+ : s, sx)
    for (int64_t p = 0; p < hw; ++p) {
      s += gr[p];
      sx += gr[p] * (xr[p] - mean);
    }
    s_all += s;
    sx_all += static_cast<double>(sx) * invstd;
  }
  *sum_dy = s_all;
  *sum_dy_xhat = sx_all;
}

}  // namespace kernels::cpu
