// CPU reference of kernels/batch_norm.h. Channel sums are taken in double (a float running sum
// over the 65,536 elements of a 64 x 32 x 32 batch loses about 3 digits); each contiguous HW row
// is summed in float first, so the inner loops still vectorise.
//
// Loop order. The channels are cut into blocks of at most 64, the blocks shared among the
// threads; a pass over a block walks the batch once and reads, in every sample, the block's
// contiguous span of 64 x HW floats (with HW = 1 the loops run across the block's channels, so
// they vectorise there instead). Per channel that is the textbook loop (rows 0..N-1 in
// order, so results do not depend on the thread count), but memory is read front to back: a
// channel-at-a-time loop strides C x HW floats between rows, which for BatchNorm1d and the 1x1
// maps of a small network's last stage (HW = 1) costs a cache line per element. On the BYOL
// demo's shapes (128 x 128 x 1, 128 x 1024) that order ran at about 10 ns per element, this one
// at well under 1 (bench/RESULTS.md, "BatchNorm loop order").
#include "kernels/batch_norm.h"
#include "kernels/cpu/batch_norm_sums.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace kernels::cpu {
namespace {

constexpr int64_t kBlock = 64;  // channels per block: with HW = 1, 4 cache lines of each sample

// Channels per block: at most kBlock, fewer when that leaves a thread without a block.
int64_t channel_block(int64_t c) {
  const int64_t threads = omp_get_max_threads();
  return std::max<int64_t>(1, std::min<int64_t>(kBlock, (c + threads - 1) / threads));
}

float row_sum(const float* r, int64_t hw) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t p = 0; p < hw; ++p) s += r[p];
  return s;
}

float row_squares(const float* r, int64_t hw, float mean) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t p = 0; p < hw; ++p) s += (r[p] - mean) * (r[p] - mean);
  return s;
}

// y = x scale + shift over channels [c0, c1) of every sample.
void scale_shift(const float* x, float* y, const float* scale, const float* shift, int64_t n, int64_t c, int64_t hw,
                 int64_t c0, int64_t c1) {
  if (hw == 1) {
    for (int64_t i = 0; i < n; ++i)
#pragma omp simd
      for (int64_t ch = c0; ch < c1; ++ch) y[i * c + ch] = x[i * c + ch] * scale[ch - c0] + shift[ch - c0];
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = c0; ch < c1; ++ch) {
      const float* r = x + (i * c + ch) * hw;
      float* out = y + (i * c + ch) * hw;
      const float a = scale[ch - c0], b = shift[ch - c0];
#pragma omp simd
      for (int64_t p = 0; p < hw; ++p) out[p] = r[p] * a + b;
    }
}

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y,
                              float* running_mean, float* running_var, float* save_mean, float* save_invstd,
                              int64_t n, int64_t c, int64_t hw, float momentum, float eps) {
  const double m = static_cast<double>(n * hw);
  const int64_t block = channel_block(c);
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < c; c0 += block) {
    const int64_t c1 = std::min(c, c0 + block);
    double sum[kBlock] = {}, squares[kBlock] = {};
    float mean[kBlock], scale[kBlock], shift[kBlock];
    // Both branches add the same float terms in the same order; hw == 1 only lets them vectorise.
    for (int64_t i = 0; i < n; ++i)
      if (hw == 1) {
        for (int64_t ch = c0; ch < c1; ++ch) sum[ch - c0] += x[i * c + ch];
      } else {
        for (int64_t ch = c0; ch < c1; ++ch) sum[ch - c0] += row_sum(x + (i * c + ch) * hw, hw);
      }
    for (int64_t ch = c0; ch < c1; ++ch) mean[ch - c0] = static_cast<float>(sum[ch - c0] / m);
    for (int64_t i = 0; i < n; ++i)
      if (hw == 1) {
        for (int64_t ch = c0; ch < c1; ++ch) {
          const float d = x[i * c + ch] - mean[ch - c0];
          squares[ch - c0] += d * d;
        }
      } else {
        for (int64_t ch = c0; ch < c1; ++ch) squares[ch - c0] += row_squares(x + (i * c + ch) * hw, hw, mean[ch - c0]);
      }
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t k = ch - c0;
      const double batch_mean = sum[k] / m, var = squares[k] / m;
      const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
      scale[k] = gamma[ch] * invstd;
      shift[k] = beta[ch] - mean[k] * scale[k];
      save_mean[ch] = mean[k];
      save_invstd[ch] = invstd;
      const double unbiased = m > 1 ? var * m / (m - 1) : var;
      running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * batch_mean);
      running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
    }
    scale_shift(x, y, scale, shift, n, c, hw, c0, c1);
  }
}

void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, float* y, int64_t n, int64_t c, int64_t hw, float eps) {
  const int64_t block = channel_block(c);
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < c; c0 += block) {
    const int64_t c1 = std::min(c, c0 + block);
    float scale[kBlock], shift[kBlock];
    for (int64_t ch = c0; ch < c1; ++ch) {
      scale[ch - c0] = gamma[ch] / std::sqrt(running_var[ch] + eps);
      shift[ch - c0] = beta[ch] - running_mean[ch] * scale[ch - c0];
    }
    scale_shift(x, y, scale, shift, n, c, hw, c0, c1);
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
  const int64_t block = channel_block(c);
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < c; c0 += block) {
    const int64_t c1 = std::min(c, c0 + block);
    float mean[kBlock], invstd[kBlock], k[kBlock], mean_dy[kBlock], mean_dy_xhat[kBlock];
    double sum_dy[kBlock] = {}, sum_dy_xhat[kBlock] = {};
    for (int64_t ch = c0; ch < c1; ++ch) {
      // Plain variables, not a structured binding: clang (the fuzz build) cannot capture those
      // into OpenMP simd regions.
      const std::pair<float, float> channel_stats = stats(ch);
      mean[ch - c0] = channel_stats.first, invstd[ch - c0] = channel_stats.second;
    }
    for (int64_t i = 0; i < n; ++i)
      if (hw == 1) {  // batch_norm_row_sums of one element, vectorised across the channels
        for (int64_t ch = c0; ch < c1; ++ch) {
          const int64_t j = ch - c0;
          const float g = dy[i * c + ch], gx = g * (x[i * c + ch] - mean[j]);
          sum_dy[j] += g;
          sum_dy_xhat[j] += static_cast<double>(gx) * invstd[j];
        }
      } else {
        for (int64_t ch = c0; ch < c1; ++ch) {
          const int64_t j = ch - c0;
          batch_norm_row_sums(x + (i * c + ch) * hw, dy + (i * c + ch) * hw, mean[j], invstd[j], hw, &sum_dy[j],
                              &sum_dy_xhat[j]);
        }
      }
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t j = ch - c0;
      dgamma[ch] = (accumulate & kBnAccumulateDgamma ? dgamma[ch] : 0.0f) + static_cast<float>(sum_dy_xhat[j]);
      dbeta[ch] = (accumulate & kBnAccumulateDbeta ? dbeta[ch] : 0.0f) + static_cast<float>(sum_dy[j]);
      k[j] = gamma[ch] * invstd[j];
      // train: dx = k (dy - mean(dy) - xhat mean(dy xhat)); eval: dx = k dy
      mean_dy[j] = batch_stats ? static_cast<float>(sum_dy[j] / m) : 0.0f;
      mean_dy_xhat[j] = batch_stats ? static_cast<float>(sum_dy_xhat[j] / m) : 0.0f;
    }
    if (hw == 1) {  // the loop below with one element per row, vectorised across the channels
      for (int64_t i = 0; i < n; ++i) {
        const float* xr = x + i * c;
        const float* gr = dy + i * c;
        float* out = dx + i * c;
#pragma omp simd
        for (int64_t ch = c0; ch < c1; ++ch) {
          const int64_t j = ch - c0;
          const float v = k[j] * (gr[ch] - mean_dy[j] - (xr[ch] - mean[j]) * invstd[j] * mean_dy_xhat[j]);
          out[ch] = add_dx ? out[ch] + v : v;
        }
      }
      continue;
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const int64_t j = ch - c0, at = (i * c + ch) * hw;
        batch_norm_dx_row(x + at, dy + at, dx + at, hw, k[j], mean[j], invstd[j], mean_dy[j], mean_dy_xhat[j],
                          add_dx);
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
