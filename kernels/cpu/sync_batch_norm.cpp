// CPU reference of kernels/sync_batch_norm.h: one OpenMP task per channel. The forward sums are
// taken in double element by element (their difference cancels; see the header); the backward
// sums sum each contiguous HW row in float (vectorised) and the rows in double, as
// kernels/cpu/batch_norm.cpp does.
#include "kernels/sync_batch_norm.h"

#include "kernels/cpu/batch_norm_sums.h"

#include <algorithm>
#include <cmath>

namespace kernels::cpu {

void batch_norm_sums(const float* x, const float* shift, double* sums, int64_t n, int64_t c, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    const double k = shift[ch];
    double s = 0, sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + (i * c + ch) * hw;
#pragma omp simd reduction(+ : s, sq)
      for (int64_t p = 0; p < hw; ++p) {
        const double d = r[p] - k;
        s += d;
        sq += d * d;
      }
    }
    sums[ch] = s;
    sums[c + ch] = sq;
  }
}

void batch_norm_sync_stats(const double* sums, double count, float* mean, float* var, float* invstd,
                           float* running_mean, float* running_var, int64_t c, float momentum, float eps) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const double shifted = sums[ch] / count;  // the mean of x - running_mean
    const double m = running_mean[ch] + shifted;
    const double v = std::max(0.0, sums[c + ch] / count - shifted * shifted);  // biased: what normalises
    mean[ch] = static_cast<float>(m);
    var[ch] = static_cast<float>(v);
    invstd[ch] = static_cast<float>(1.0 / std::sqrt(v + eps));
    const double unbiased = count > 1 ? v * count / (count - 1) : v;
    running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * m);
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
  }
}

void batch_norm_backward_sums(const float* x, const float* dy, const float* mean, const float* invstd, double* local,
                              double* global, int64_t n, int64_t c, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    double s = 0, sx = 0;
    batch_norm_channel_sums(x, dy, mean[ch], invstd[ch], n, c, hw, ch, &s, &sx);
    local[ch] = global[ch] = s;
    local[c + ch] = global[c + ch] = sx;
  }
}

void batch_norm_backward_apply(const float* x, const float* dy, const float* gamma, const float* mean,
                               const float* invstd, const double* local, const double* global, double count,
                               float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,
                               uint32_t accumulate) {
  const bool add_dx = accumulate & kBnAccumulateDx;
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    dgamma[ch] = (accumulate & kBnAccumulateDgamma ? dgamma[ch] : 0.0f) + static_cast<float>(local[c + ch]);
    dbeta[ch] = (accumulate & kBnAccumulateDbeta ? dbeta[ch] : 0.0f) + static_cast<float>(local[ch]);
    const float k = gamma[ch] * invstd[ch], mu = mean[ch], is = invstd[ch];
    const float mean_dy = static_cast<float>(global[ch] / count);
    const float mean_dy_xhat = static_cast<float>(global[c + ch] / count);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = (i * c + ch) * hw;
      batch_norm_dx_row(x + at, dy + at, dx + at, hw, k, mu, is, mean_dy, mean_dy_xhat, add_dx);
    }
  }
}

}  // namespace kernels::cpu
