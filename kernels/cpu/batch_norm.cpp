// CPU reference of kernels/batch_norm.h. Channel sums are taken in double (a float running sum
// over the 65,536 elements of a 64 x 32 x 32 batch loses about 3 digits).
//
// Loop order. The channels are cut into blocks of at most 64, the blocks shared among the
// threads; a pass over a block walks the batch once and reads, in every sample, the block's
// contiguous span of (channels x HW) floats, so memory is read front to back: a
// channel-at-a-time loop strides C x HW floats between rows, which for BatchNorm1d and the 1x1
// maps of a small network's last stage (HW = 1) costs a cache line per element (on the BYOL
// demo's 128 x 128 x 1 and 128 x 1024 shapes that order ran at about 10 ns per element, this one
// at well under 1: bench/RESULTS.md, "BatchNorm loop order"). Two ways through a span:
//  - small maps (HW up to 16: BatchNorm1d, the demo's last three stages): element by element,
//    each element's sum over the batch kept in double and vectorised across the whole span;
//    the channel's total is then the sum of its HW elements. Per-row loops would run 4-float
//    vectors with a reduction each on a 2x2 map (4x slower there: layer3's forward 80 -> 20 us);
//  - larger maps: row by row, each contiguous HW row summed in float first (vectorised), the
//    row sums added in double.
// Either way a channel's sums run over the samples in order, whatever the thread count, so
// results do not depend on it.
#include "kernels/batch_norm.h"
#include "kernels/cpu/batch_norm_sums.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace kernels::cpu {
namespace {

constexpr int64_t kBlock = 64;                // channels per block: with HW = 1, 4 cache lines of each sample
constexpr int64_t kSmallMap = 16;             // HW up to this goes element-wise (by HW alone, so that the
constexpr int64_t kSpan = kBlock * kSmallMap;  // path, and so the sums' order, never depends on the threads)

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

// One value per channel of a block spread over its span: out[(ch, p)] = v[ch] for p < hw.
void spread(const float* v, int64_t channels, int64_t hw, float* out) {
  for (int64_t ch = 0; ch < channels; ++ch)
    for (int64_t p = 0; p < hw; ++p) out[ch * hw + p] = v[ch];
}

// Per channel of a block, the sum of its hw elements of an element-wise span sum.
void channel_totals(const double* acc, int64_t channels, int64_t hw, double* out) {
  for (int64_t ch = 0; ch < channels; ++ch) {
    double t = 0;
    for (int64_t p = 0; p < hw; ++p) t += acc[ch * hw + p];
    out[ch] = t;
  }
}

// The block's channel sums of x and of (x - mean)^2 (mean given per channel once `sum` is known).
void moments(const float* x, int64_t n, int64_t c, int64_t hw, int64_t c0, int64_t c1, double m, double* sum,
             double* squares, float* mean) {
  const int64_t channels = c1 - c0, len = channels * hw;
  if (hw <= kSmallMap) {
    double acc[kSpan];
    float centre[kSpan];
    std::fill(acc, acc + len, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + (i * c + c0) * hw;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) acc[j] += r[j];
    }
    channel_totals(acc, channels, hw, sum);
    for (int64_t k = 0; k < channels; ++k) mean[k] = static_cast<float>(sum[k] / m);
    spread(mean, channels, hw, centre);
    std::fill(acc, acc + len, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + (i * c + c0) * hw;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const float d = r[j] - centre[j];
        acc[j] += d * d;
      }
    }
    channel_totals(acc, channels, hw, squares);
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = c0; ch < c1; ++ch) sum[ch - c0] += row_sum(x + (i * c + ch) * hw, hw);
  for (int64_t k = 0; k < channels; ++k) mean[k] = static_cast<float>(sum[k] / m);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = c0; ch < c1; ++ch) squares[ch - c0] += row_squares(x + (i * c + ch) * hw, hw, mean[ch - c0]);
}

// y = x scale + shift over channels [c0, c1) of every sample.
void scale_shift(const float* x, float* y, const float* scale, const float* shift, int64_t n, int64_t c, int64_t hw,
                 int64_t c0, int64_t c1) {
  const int64_t channels = c1 - c0, len = channels * hw;
  if (hw <= kSmallMap) {
    float a[kSpan], b[kSpan];
    spread(scale, channels, hw, a);
    spread(shift, channels, hw, b);
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + (i * c + c0) * hw;
      float* out = y + (i * c + c0) * hw;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) out[j] = r[j] * a[j] + b[j];
    }
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
                              int64_t n, int64_t c, int64_t hw, float momentum, float eps,
                              float* /*scratch*/) {
  const double m = static_cast<double>(n * hw);
  const int64_t block = channel_block(c);
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < c; c0 += block) {
    const int64_t c1 = std::min(c, c0 + block);
    double sum[kBlock] = {}, squares[kBlock] = {};
    float mean[kBlock], scale[kBlock], shift[kBlock];
    moments(x, n, c, hw, c0, c1, m, sum, squares, mean);
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
    const int64_t channels = c1 - c0, len = channels * hw;
    const bool span = hw <= kSmallMap;
    float centre[kSpan];  // the span path's per-element mean, kept for dx below
    if (span) {  // element-wise over the span, as moments() does
      double acc_dy[kSpan], acc_gx[kSpan], gx_total[kBlock];
      spread(mean, channels, hw, centre);
      std::fill(acc_dy, acc_dy + len, 0.0);
      std::fill(acc_gx, acc_gx + len, 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const float* r = x + (i * c + c0) * hw;
        const float* g = dy + (i * c + c0) * hw;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          acc_dy[j] += g[j];
          acc_gx[j] += g[j] * (r[j] - centre[j]);
        }
      }
      channel_totals(acc_dy, channels, hw, sum_dy);
      channel_totals(acc_gx, channels, hw, gx_total);
      for (int64_t j = 0; j < channels; ++j) sum_dy_xhat[j] = gx_total[j] * invstd[j];
    } else {
      for (int64_t i = 0; i < n; ++i)
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
    if (span) {  // dx = k (dy - mean_dy - (x - mean) q), q = invstd mean_dy_xhat, per element
      float kk[kSpan], mdy[kSpan], q[kSpan], per_channel[kBlock];
      spread(k, channels, hw, kk);
      spread(mean_dy, channels, hw, mdy);
      for (int64_t j = 0; j < channels; ++j) per_channel[j] = invstd[j] * mean_dy_xhat[j];
      spread(per_channel, channels, hw, q);
      for (int64_t i = 0; i < n; ++i) {
        const float* r = x + (i * c + c0) * hw;
        const float* g = dy + (i * c + c0) * hw;
        float* out = dx + (i * c + c0) * hw;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float v = kk[j] * (g[j] - mdy[j] - (r[j] - centre[j]) * q[j]);
          out[j] = add_dx ? out[j] + v : v;
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
                               int64_t c, int64_t hw, float /*eps: save_invstd includes it*/, uint32_t accumulate,
                               float* /*scratch*/) {
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
