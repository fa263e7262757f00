// CUDA twin of kernels/batch_norm.h.
// Train forward / backward and the eval forward are cuDNN's spatial batch normalisation
// (CUDNN_BATCHNORM_SPATIAL: statistics over N, H, W per channel). cuDNN's conventions match
// PyTorch's: exponentialAverageFactor is PyTorch's momentum (running = (1 - f) running + f
// batch) and the running variance folds in the unbiased batch variance; resultSaveMean /
// resultSaveInvVariance are the batch mean and 1 / sqrt(var + eps) the CPU twin saves too.
// The backward accumulates (betaDataDiff = betaParamDiff = 1), as every backward does.
// cuDNN has no backward for the eval forward (statistics as constants), so that one is a small
// kernel here: one block per channel reduces dy and dy * xhat, then adds into dx.
#include <array>
#include <map>

#include "kernels/batch_norm.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {
namespace {

struct BnDescriptors {
  cudnnTensorDescriptor_t x = nullptr;        // (N, C, HW, 1)
  cudnnTensorDescriptor_t channel = nullptr;  // (1, C, 1, 1)
};

// Descriptors per shape, made once and kept for the process (a handful per model).
const BnDescriptors& descriptors(int64_t n, int64_t c, int64_t hw) {
  static std::map<std::array<int64_t, 3>, BnDescriptors> cache;
  const std::array<int64_t, 3> key{n, c, hw};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int64_t limit = (int64_t{1} << 31) - 1;
  if (n > limit || c > limit || hw > limit)
    throw_status("cuDNN", "batch_norm dimension does not fit cuDNN's int", "batch_norm", __FILE__, __LINE__);
  BnDescriptors d;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.channel));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, static_cast<int>(n),
                                         static_cast<int>(c), static_cast<int>(hw), 1));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.channel, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, static_cast<int>(c), 1,
                                         1));
  return cache.emplace(key, d).first->second;
}

__global__ void increment_kernel(float* counter) { counter[0] += 1.0f; }

constexpr int kThreads = 256;

// Block-wide sum of two values; every thread gets the totals.
__device__ void block_sum2(float& a, float& b) {
  __shared__ float sa[kThreads / 32], sb[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kThreads / 32 ? sa[lane] : 0.0f;
    b = lane < kThreads / 32 ? sb[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
    if (lane == 0) {
      sa[0] = a;
      sb[0] = b;
    }
  }
  __syncthreads();
  a = sa[0];
  b = sb[0];
}

// One block per channel: dgamma += sum dy xhat, dbeta += sum dy, dx += gamma invstd dy.
__global__ void backward_eval_kernel(const float* x, const float* dy, const float* gamma, const float* running_mean,
                                     const float* running_var, float* dx, float* dgamma, float* dbeta, int64_t n,
                                     int64_t c, int64_t hw, float eps) {
  const int64_t ch = blockIdx.x;
  const float mean = running_mean[ch], invstd = rsqrtf(running_var[ch] + eps), k = gamma[ch] * invstd;
  float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
  for (int64_t e = threadIdx.x; e < n * hw; e += blockDim.x) {
    const int64_t idx = ((e / hw) * c + ch) * hw + e % hw;
    const float g = dy[idx];
    sum_dy += g;
    sum_dy_xhat += g * (x[idx] - mean) * invstd;
    dx[idx] += k * g;
  }
  block_sum2(sum_dy, sum_dy_xhat);
  if (threadIdx.x == 0) {
    dgamma[ch] += sum_dy_xhat;
    dbeta[ch] += sum_dy;
  }
}

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y, float* running_mean,
                              float* running_var, float* num_batches, float* save_mean, float* save_invstd, int64_t n,
                              int64_t c, int64_t hw, float momentum, float eps) {
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x, x,
                                                     d.x, y, d.channel, gamma, beta, momentum, running_mean,
                                                     running_var, eps, save_mean, save_invstd));
  increment_kernel<<<1, 1, 0, runtime().stream>>>(num_batches);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, float* y, int64_t n, int64_t c, int64_t hw, float eps) {
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardInference(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x, x,
                                                      d.x, y, d.channel, gamma, beta, running_mean, running_var,
                                                      eps));
}

void batch_norm_backward_train(const float* x, const float* dy, const float* gamma, const float* save_mean,
                               const float* save_invstd, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                               int64_t hw, float eps) {
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f;
  CUDNN_CHECK(cudnnBatchNormalizationBackward(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &one, &one, &one, d.x,
                                              x, d.x, dy, d.x, dx, d.channel, gamma, dgamma, dbeta, eps, save_mean,
                                              save_invstd));
}

void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma, const float* running_mean,
                              const float* running_var, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                              int64_t hw, float eps) {
  if (c == 0) return;
  if (c > 2147483647LL)
    throw_status("CUDA", "batch_norm channel count exceeds the grid limit", "batch_norm_backward_eval", __FILE__,
                 __LINE__);
  backward_eval_kernel<<<static_cast<unsigned>(c), kThreads, 0, runtime().stream>>>(
      x, dy, gamma, running_mean, running_var, dx, dgamma, dbeta, n, c, hw, eps);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
