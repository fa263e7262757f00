// CUDA twin of kernels/batch_norm.h.
// Train forward / backward and the eval forward are cuDNN's spatial batch normalisation
// (CUDNN_BATCHNORM_SPATIAL: statistics over N, H, W per channel). cuDNN's conventions match
// PyTorch's: exponentialAverageFactor is PyTorch's momentum (running = (1 - f) running + f
// batch) and the running variance folds in the unbiased batch variance; resultSaveMean /
// resultSaveInvVariance are the batch mean and 1 / sqrt(var + eps) the CPU twin saves too.
// The backward accumulates into the engine's gradients (betaDataDiff / betaParamDiff = 1) and
// overwrites scratch outputs (beta = 0), as the `accumulate` bits say: scratch is never read,
// so it needs no initialising (uninitialised memory may hold NaN, and NaN * 0 is NaN).
// cuDNN has no backward for the eval forward (statistics as constants), so that one is two
// small kernels here: (channel, segment) blocks add gamma invstd dy into dx and reduce dy and
// dy xhat into per-segment partials (scratch from the caller), then one thread per channel
// sums its segments in order: deterministic, and C x segments blocks instead of C.
// num_batches_tracked: batch_norm_count_batches, one launch for every layer of a step.
// Cost: the cuDNN calls as kernels/batch_norm.h counts; the eval backward reads x and dy once
// and reads and writes dx (16 bytes an element, 5 FLOPs), plus 8 C x segments bytes of partials.
#include <array>
#include <map>
#include <string>

#include "kernels/batch_norm.h"
#include "kernels/common/conv_algo.h"
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
  if (const std::string problem = kernels::cudnn_tensor_problem("batch_norm input", n, c, hw, 1); !problem.empty())
    throw_status("cuDNN", problem.c_str(), "batch_norm", __FILE__, __LINE__);
  BnDescriptors d;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.channel));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, static_cast<int>(n),
                                         static_cast<int>(c), static_cast<int>(hw), 1));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.channel, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, static_cast<int>(c), 1,
                                         1));
  return cache.emplace(key, d).first->second;
}

constexpr int kThreads = 256;

// counters[i] += add[i]: every layer's num_batches_tracked of a step in one launch.
__global__ void count_batches_kernel(BatchCounters c) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < c.count) c.counter[i][0] += c.add[i];
}

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

// Eval backward, stage 1: block (channel, segment) takes `per` images of one channel, adds
// gamma invstd dy into dx and leaves its sums of dy and dy xhat in partials (C, segments, 2).
// The block's threads are laid out as images x positions with a power-of-two row of
// `row_threads` >= HW (or 256) threads, so no index is divided: a thread walks its images'
// planes with a pointer step, and a plane of HW elements costs 32-bit adds only.
__global__ void __launch_bounds__(kThreads)
    backward_eval_partials_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                  const float* __restrict__ gamma, const float* __restrict__ running_mean,
                                  const float* __restrict__ running_var, float* __restrict__ dx,
                                  float* __restrict__ partials, int64_t n, int64_t c, int hw, int64_t per, int row_shift,
                                  float eps, bool add_dx) {
  const int64_t ch = blockIdx.x, seg = blockIdx.y;
  const float mean = running_mean[ch], invstd = 1.0f / sqrtf(running_var[ch] + eps), k = gamma[ch] * invstd;
  const int row_threads = 1 << row_shift;
  const int pos0 = threadIdx.x & (row_threads - 1);
  const int64_t images_per_pass = kThreads >> row_shift;
  const int64_t begin = seg * per, end = begin + per < n ? begin + per : n;
  float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
  for (int64_t img = begin + (threadIdx.x >> row_shift); img < end; img += images_per_pass) {
    const int64_t plane = (img * c + ch) * hw;
    const float* xp = x + plane;
    const float* gp = dy + plane;
    float* dp = dx + plane;
    for (int pos = pos0; pos < hw; pos += row_threads) {
      const float g = gp[pos];
      sum_dy += g;
      sum_dy_xhat += g * (xp[pos] - mean) * invstd;
      dp[pos] = add_dx ? dp[pos] + k * g : k * g;
    }
  }
  block_sum2(sum_dy, sum_dy_xhat);
  if (threadIdx.x == 0) {
    float* out = partials + 2 * (ch * gridDim.y + seg);
    out[0] = sum_dy_xhat;
    out[1] = sum_dy;
  }
}

// Eval backward, stage 2: one thread per channel sums its segments in order (deterministic).
__global__ void backward_eval_sum_kernel(const float* __restrict__ partials, float* __restrict__ dgamma,
                                         float* __restrict__ dbeta, int64_t c, int64_t segments, bool add_dgamma,
                                         bool add_dbeta) {
  // Grid-stride: the launch's grid is capped, the channel count is not.
  for (int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; ch < c;
       ch += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dg = 0.0f, db = 0.0f;
    for (int64_t s = 0; s < segments; ++s) {
      dg += partials[2 * (ch * segments + s)];
      db += partials[2 * (ch * segments + s) + 1];
    }
    dgamma[ch] = add_dgamma ? dgamma[ch] + dg : dg;
    dbeta[ch] = add_dbeta ? dbeta[ch] + db : db;
  }
}

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y, float* running_mean,
                              float* running_var, float* save_mean, float* save_invstd, int64_t n, int64_t c,
                              int64_t hw, float momentum, float eps) {
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x, x,
                                                     d.x, y, d.channel, gamma, beta, momentum, running_mean,
                                                     running_var, eps, save_mean, save_invstd));
}

void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, float* y, int64_t n, int64_t c, int64_t hw, float eps) {
  if (n * c * hw == 0) return;  // an empty batch: cuDNN refuses a zero dimension
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardInference(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x, x,
                                                      d.x, y, d.channel, gamma, beta, running_mean, running_var,
                                                      eps));
}

void batch_norm_backward_train(const float* x, const float* dy, const float* gamma, const float* save_mean,
                               const float* save_invstd, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                               int64_t hw, float eps, uint32_t accumulate) {
  const BnDescriptors& d = descriptors(n, c, hw);
  const float one = 1.0f, zero = 0.0f;
  const bool add_dgamma = accumulate & kBnAccumulateDgamma, add_dbeta = accumulate & kBnAccumulateDbeta;
  // cuDNN has one beta for both parameter gradients. When only one of them accumulates, the
  // other (scratch) is zeroed first so that adding into it is writing it.
  if (add_dgamma != add_dbeta)
    CUDA_CHECK(cudaMemsetAsync(add_dgamma ? dbeta : dgamma, 0, size_t(c) * sizeof(float), runtime().stream));
  const float* beta_data = (accumulate & kBnAccumulateDx) ? &one : &zero;
  const float* beta_param = (add_dgamma || add_dbeta) ? &one : &zero;
  CUDNN_CHECK(cudnnBatchNormalizationBackward(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, beta_data, &one,
                                              beta_param, d.x, x, d.x, dy, d.x, dx, d.channel, gamma, dgamma, dbeta,
                                              eps, save_mean, save_invstd));
}

void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma, const float* running_mean,
                              const float* running_var, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                              int64_t hw, float eps, uint32_t accumulate, float* scratch) {
  if (c == 0) return;
  const int64_t per = batch_norm_eval_images_per_segment(n, hw);
  const int64_t segments = (n + per - 1) / per;
  if (c > 2147483647LL || segments > 65535 || hw > 2147483647LL)
    throw_status("CUDA", "batch_norm shape exceeds the grid or 32-bit plane limits", "batch_norm_backward_eval",
                 __FILE__, __LINE__);
  int row_shift = 0;  // threads per image row: the power of two >= HW, at most the block
  while ((1 << row_shift) < hw && (1 << row_shift) < kThreads) ++row_shift;
  if (n > 0) {
    backward_eval_partials_kernel<<<dim3(static_cast<unsigned>(c), static_cast<unsigned>(segments)), kThreads, 0,
                                    runtime().stream>>>(x, dy, gamma, running_mean, running_var, dx, scratch, n, c,
                                                        static_cast<int>(hw), per, row_shift, eps,
                                                        (accumulate & kBnAccumulateDx) != 0);
    KERNEL_LAUNCH_CHECK();
  }
  backward_eval_sum_kernel<<<grid_for(c), 256, 0, runtime().stream>>>(
      scratch, dgamma, dbeta, c, n > 0 ? segments : 0, (accumulate & kBnAccumulateDgamma) != 0,
      (accumulate & kBnAccumulateDbeta) != 0);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_count_batches(BatchCounters counters) {
  if (counters.count <= 0) return;
  count_batches_kernel<<<1, BatchCounters::kMax, 0, runtime().stream>>>(counters);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
