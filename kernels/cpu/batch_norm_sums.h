// The per-channel sums and the data-gradient row BatchNorm's backward needs, shared by the plain kernel
// (kernels/cpu/batch_norm.cpp) and SyncBN's (kernels/cpu/sync_batch_norm.cpp), which all-reduces
// them across ranks before using them. Cost: one read of x and dy for the channel.
#pragma once

#include <cstdint>

namespace kernels::cpu {

// One row (HW contiguous floats of one sample and channel) added to the channel's sums:
// *sum_dy += sum dy, *sum_dy_xhat += sum dy * (x - mean) * invstd; the row in float, the
// running sums in double.
inline void batch_norm_row_sums(const float* xr, const float* gr, float mean, float invstd, int64_t hw,
                                double* sum_dy, double* sum_dy_xhat) {
  float s = 0, sx = 0;
#pragma omp simd reduction(+ : s, sx)
  for (int64_t p = 0; p < hw; ++p) {
    s += gr[p];
    sx += gr[p] * (xr[p] - mean);
  }
  *sum_dy += s;
  *sum_dy_xhat += static_cast<double>(sx) * invstd;
}

// One row's data gradient, dx = k (dy - mean_dy - (x - mean) invstd mean_dy_xhat) with
// k = gamma invstd (eval: mean_dy = mean_dy_xhat = 0), added into or written over `out`.
inline void batch_norm_dx_row(const float* xr, const float* gr, float* out, int64_t hw, float k, float mean,
                              float invstd, float mean_dy, float mean_dy_xhat, bool add) {
  if (add) {
#pragma omp simd
    for (int64_t p = 0; p < hw; ++p) out[p] += k * (gr[p] - mean_dy - (xr[p] - mean) * invstd * mean_dy_xhat);
  } else {
#pragma omp simd
    for (int64_t p = 0; p < hw; ++p) out[p] = k * (gr[p] - mean_dy - (xr[p] - mean) * invstd * mean_dy_xhat);
  }
}

// x, dy: (N, C, HW); channel ch with its batch mean and inverse std.
// *sum_dy = sum dy, *sum_dy_xhat = sum dy * (x - mean) * invstd, in double across rows.
inline void batch_norm_channel_sums(const float* x, const float* dy, float mean, float invstd, int64_t n, int64_t c,
                                    int64_t hw, int64_t ch, double* sum_dy, double* sum_dy_xhat) {
  *sum_dy = 0;
  *sum_dy_xhat = 0;
  for (int64_t i = 0; i < n; ++i)
    batch_norm_row_sums(x + (i * c + ch) * hw, dy + (i * c + ch) * hw, mean, invstd, hw, sum_dy, sum_dy_xhat);
}

}  // namespace kernels::cpu
