// CUDA twin of kernels/cpu/sync_batch_norm.cpp (kernels/sync_batch_norm.h). The sums: one block
// per channel, each thread adding a strided share of the channel's N HW elements in double, then
// a shared-memory tree (a fixed order: the same input gives the same bits). The stats: one
// thread per channel. The apply: (image, channel) planes on the grid (plane_launch), the
// channel's constants read once per plane, 32-bit indices inside it.
// Index math: the sums split a channel's element number e < N HW (checked under 2^31) into image
// and position with FastDivmod's multiply-high and shift, and the apply divides nothing per
// element: no 64-bit division per element (there were two or three).
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/fast_divmod.h"
#include "kernels/cuda/runtime.h"
#include "kernels/sync_batch_norm.h"

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Adds (a, b) of every thread of the block; thread 0 returns the totals.
__device__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kThreads], sb[kThreads];
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
      sa[threadIdx.x] += sa[threadIdx.x + half];
      sb[threadIdx.x] += sb[threadIdx.x + half];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
}

// The offset of element e (< N HW, under 2^31) of channel ch: image e / HW, position e % HW.
__device__ int64_t channel_element(uint32_t e, int64_t ch, int64_t c, int64_t hw, FastDivmod by_hw) {
  uint32_t pos;
  const uint32_t img = by_hw.divmod(e, &pos);
  return (img * c + ch) * hw + pos;
}

__global__ void sums_kernel(const float* x, const float* shift, double* sums, uint32_t m, int64_t c, int64_t hw,
                            FastDivmod by_hw) {
  const int64_t ch = blockIdx.x;
  const double k = shift[ch];
  double s = 0, q = 0;
  for (uint32_t e = threadIdx.x; e < m; e += kThreads) {
    const double d = x[channel_element(e, ch, c, hw, by_hw)] - k;
    s += d;
    q += d * d;
  }
  block_sum2(s, q);
  if (threadIdx.x == 0) {
    sums[ch] = s;
    sums[c + ch] = q;
  }
}

__global__ void stats_kernel(const double* sums, double count, float* mean, float* var, float* invstd,
                             float* running_mean, float* running_var, int64_t c, float momentum, float eps) {
  // Grid-stride: the launch's grid is capped, the channel count is not.
  for (int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; ch < c;
       ch += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double shifted = sums[ch] / count;  // the mean of x - running_mean
    const double m = running_mean[ch] + shifted;
    const double v = fmax(0.0, sums[c + ch] / count - shifted * shifted);
    mean[ch] = static_cast<float>(m);
    var[ch] = static_cast<float>(v);
    invstd[ch] = static_cast<float>(1.0 / sqrt(v + eps));
    const double unbiased = count > 1 ? v * count / (count - 1) : v;
    running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * m);
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
  }
}

__global__ void backward_sums_kernel(const float* x, const float* dy, const float* mean, const float* invstd,
                                     double* local, double* global, uint32_t m, int64_t c, int64_t hw,
                                     FastDivmod by_hw) {
  const int64_t ch = blockIdx.x;
  const float mu = mean[ch];
  double s = 0, sx = 0;
  for (uint32_t e = threadIdx.x; e < m; e += kThreads) {
    const int64_t at = channel_element(e, ch, c, hw, by_hw);
    s += dy[at];
    sx += static_cast<double>(dy[at]) * (x[at] - mu);
  }
  block_sum2(s, sx);
  if (threadIdx.x == 0) {
    local[ch] = global[ch] = s;
    local[c + ch] = global[c + ch] = sx * invstd[ch];
  }
}

__global__ void grads_kernel(const double* local, float* dgamma, float* dbeta, int64_t c, bool add_dgamma,
                             bool add_dbeta) {
  // Grid-stride: the launch's grid is capped, the channel count is not.
  for (int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; ch < c;
       ch += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dgamma[ch] = (add_dgamma ? dgamma[ch] : 0.0f) + static_cast<float>(local[c + ch]);
    dbeta[ch] = (add_dbeta ? dbeta[ch] : 0.0f) + static_cast<float>(local[ch]);
  }
}

// Planes (N C) of HW elements on the grid (plane_launch).
__global__ void apply_kernel(const float* x, const float* dy, const float* gamma, const float* mean,
                             const float* invstd, const double* global, double count, float* dx, int64_t planes,
                             int64_t c, int hw, bool add_dx) {
  for (int64_t p = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; p < planes; p += int64_t(gridDim.y) * blockDim.y) {
    const int64_t ch = p % c;  // once per plane
    const float is = invstd[ch], k = gamma[ch] * is, mu = mean[ch];
    const float mean_dy = static_cast<float>(global[ch] / count), mean_dy_xhat = static_cast<float>(global[c + ch] / count);
    const int64_t at = p * hw;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hw; j += gridDim.x * blockDim.x) {
      const int64_t e = at + j;
      const float g = k * (dy[e] - mean_dy - (x[e] - mu) * is * mean_dy_xhat);
      dx[e] = add_dx ? dx[e] + g : g;
    }
  }
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// A channel's N HW elements are numbered in 32 bits, and the last `e += kThreads` must not wrap.
uint32_t channel_elements(int64_t n, int64_t hw, const char* kernel) {
  const int64_t m = n * hw;
  if (m > kMaxIndex32 - kThreads)
    throw_status("CUDA",
                 ("expected at most 2^31 - 257 elements per channel (N * HW), found " + std::to_string(m)).c_str(),
                 kernel, __FILE__, __LINE__);
  return static_cast<uint32_t>(m);
}

}  // namespace

void batch_norm_sums(const float* x, const float* shift, double* sums, int64_t n, int64_t c, int64_t hw) {
  if (c == 0) return;  // a grid of no blocks is a launch error
  const uint32_t m = channel_elements(n, hw, "batch_norm_sums");
  sums_kernel<<<static_cast<unsigned>(c), kThreads, 0, runtime().stream>>>(x, shift, sums, m, c, hw,
                                                                          FastDivmod(hw > 0 ? hw : 1));
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_sync_stats(const double* sums, double count, float* mean, float* var, float* invstd,
                           float* running_mean, float* running_var, int64_t c, float momentum, float eps) {
  stats_kernel<<<blocks_for(c, kThreads), kThreads, 0, runtime().stream>>>(sums, count, mean, var, invstd, running_mean,
                                                                           running_var, c, momentum, eps);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_backward_sums(const float* x, const float* dy, const float* mean, const float* invstd, double* local,
                              double* global, int64_t n, int64_t c, int64_t hw) {
  if (c == 0) return;
  const uint32_t m = channel_elements(n, hw, "batch_norm_backward_sums");
  backward_sums_kernel<<<static_cast<unsigned>(c), kThreads, 0, runtime().stream>>>(
      x, dy, mean, invstd, local, global, m, c, hw, FastDivmod(hw > 0 ? hw : 1));
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_backward_apply(const float* x, const float* dy, const float* gamma, const float* mean,
                               const float* invstd, const double* local, const double* global, double count,
                               float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t hw,
                               uint32_t accumulate) {
  grads_kernel<<<blocks_for(c, kThreads), kThreads, 0, runtime().stream>>>(
      local, dgamma, dbeta, c, (accumulate & kBnAccumulateDgamma) != 0, (accumulate & kBnAccumulateDbeta) != 0);
  KERNEL_LAUNCH_CHECK();
  if (n * c * hw == 0) return;
  const PlaneLaunch l = plane_launch(n * c, hw, "batch_norm_backward_apply");
  apply_kernel<<<l.grid, l.block, 0, runtime().stream>>>(x, dy, gamma, mean, invstd, global, count, dx, n * c, c,
                                                         static_cast<int>(hw), (accumulate & kBnAccumulateDx) != 0);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
