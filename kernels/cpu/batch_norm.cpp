// CPU reference of kernels/batch_norm.h: one OpenMP task per channel, two passes over its
// N x HW elements. Channel sums are taken in double (a float running sum over the 65,536
// elements of a 64 x 32 x 32 batch loses about 3 digits); each contiguous HW row is summed
// in float first, so the inner loops still vectorise.
#include "kernels/batch_norm.h"
#include "kernels/cpu/batch_norm_sums.h"

#include <cmath>
#include <utility>

namespace kernels::cpu {
namespace {

// sum over n of f(row n of channel ch) where a row is HW contiguous floats.
template <typename RowSum>
double channel_sum(int64_t n, RowSum row_sum) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += row_sum(i);
  return total;
}

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y,
                              float* running_mean, float* running_var, float* save_mean, float* save_invstd,
                              int64_t n, int64_t c, int64_t hw, float momentum, float eps) {
  const double m = static_cast<double>(n * hw);
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    const auto row = [&](int64_t i) { return x + (i * c + ch) * hw; };
    const double mean = channel_sum(n, [&](int64_t i) {
                          const float* r = row(i);
                          float s = 0;
#pragma omp simd reduction(+ : s)
                          for (int64_t p = 0; p < hw; ++p) s += r[p];
                          return static_cast<double>(s);
                        }) / m;
    const float mean_f = static_cast<float>(mean);
    const double var = channel_sum(n, [&](int64_t i) {
                         const float* r = row(i);
                         float s = 0;
#pragma omp simd reduction(+ : s)
                         for (int64_t p = 0; p < hw; ++p) s += (r[p] - mean_f) * (r[p] - mean_f);
                         return static_cast<double>(s);
                       }) / m;
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float scale = gamma[ch] * invstd, shift = beta[ch] - mean_f * scale;
    for (int64_t i = 0; i < n; ++i) {
      const float* r = row(i);
      float* out = y + (i * c + ch) * hw;
#pragma omp simd
      for (int64_t p = 0; p < hw; ++p) out[p] = r[p] * scale + shift;
    }
    save_mean[ch] = mean_f;
    save_invstd[ch] = invstd;
    const double unbiased = m > 1 ? var * m / (m - 1) : var;
    running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * mean);
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
  }
}

void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, float* y, int64_t n, int64_t c, int64_t hw, float eps) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const float scale = gamma[ch] / std::sqrt(running_var[ch] + eps);
      const float shift = beta[ch] - running_mean[ch] * scale;
      const float* r = x + (i * c + ch) * hw;
      float* out = y + (i * c + ch) * hw;
#pragma omp simd
      for (int64_t p = 0; p < hw; ++p) out[p] = r[p] * scale + shift;
    }
  }
}

namespace {

// Shared by both backward passes: stats(ch) gives the mean and inverse std the forward
// normalised channel ch with; `batch_stats` says whether those depend on x (train: the two
// extra terms from the gradient of the batch mean and variance) or are constants (eval).
// `accumulate` (BnAccumulate bits): which outputs add into their buffer; the others are
// written without being read (the engine's scratch for inputs that need no gradient).
template <typename Stats>
void backward(const float* x, const float* dy, const float* gamma, Stats stats, bool batch_stats, float* dx,
              float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw, uint32_t accumulate) {
  const double m = static_cast<double>(n * hw);
  const bool add_dx = accumulate & kBnAccumulateDx;
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    // Plain variables, not a structured binding: clang (the fuzz build) cannot capture those
    // into the OpenMP simd regions below.
    const std::pair<float, float> channel_stats = stats(ch);
    const float mean = channel_stats.first, invstd = channel_stats.second;
    double sum_dy = 0, sum_dy_xhat = 0;
    batch_norm_channel_sums(x, dy, mean, invstd, n, c, hw, ch, &sum_dy, &sum_dy_xhat);
    dgamma[ch] = (accumulate & kBnAccumulateDgamma ? dgamma[ch] : 0.0f) + static_cast<float>(sum_dy_xhat);
    dbeta[ch] = (accumulate & kBnAccumulateDbeta ? dbeta[ch] : 0.0f) + static_cast<float>(sum_dy);
    const float k = gamma[ch] * invstd;
    // train: dx = k (dy - mean(dy) - xhat mean(dy xhat)); eval: dx = k dy
    const float mean_dy = batch_stats ? static_cast<float>(sum_dy / m) : 0.0f;
    const float mean_dy_xhat = batch_stats ? static_cast<float>(sum_dy_xhat / m) : 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float* xr = x + (i * c + ch) * hw;
      const float* gr = dy + (i * c + ch) * hw;
      float* out = dx + (i * c + ch) * hw;
      if (add_dx) {
#pragma omp simd
        for (int64_t p = 0; p < hw; ++p) out[p] += k * (gr[p] - mean_dy - (xr[p] - mean) * invstd * mean_dy_xhat);
      } else {
#pragma omp simd
        for (int64_t p = 0; p < hw; ++p) out[p] = k * (gr[p] - mean_dy - (xr[p] - mean) * invstd * mean_dy_xhat);
      }
    }
  }
}

}  // namespace

void batch_norm_backward_train(const float* x, const float* dy, const float* gamma, const float* save_mean,
                               const float* save_invstd, float* dx, float* dgamma, float* dbeta, int64_t n,
                               int64_t c, int64_t hw, float /*eps: save_invstd includes it*/, uint32_t accumulate) {
  const auto stats = [&](int64_t ch) { return std::pair<float, float>(save_mean[ch], save_invstd[ch]); };
  backward(x, dy, gamma, stats, true, dx, dgamma, dbeta, n, c, hw, accumulate);
}

void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma, const float* running_mean,
                              const float* running_var, float* dx, float* dgamma, float* dbeta, int64_t n,
                              int64_t c, int64_t hw, float eps, uint32_t accumulate, float* /*scratch*/) {
  const auto stats = [&](int64_t ch) {
    return std::pair<float, float>(running_mean[ch], 1.0f / std::sqrt(running_var[ch] + eps));
  };
  backward(x, dy, gamma, stats, false, dx, dgamma, dbeta, n, c, hw, accumulate);
}

void batch_norm_count_batches(BatchCounters counters) {
  for (int32_t i = 0; i < counters.count; ++i) counters.counter[i][0] += counters.add[i];
}

}  // namespace kernels::cpu
