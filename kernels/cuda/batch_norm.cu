// CUDA twin of kernels/batch_norm.h.
// The forwards are cuDNN's spatial batch normalisation (CUDNN_BATCHNORM_SPATIAL: statistics
// over N, H, W per channel) unless TESSERA_BN_FORWARD=tessera picks the kernels below, written
// after ncu's table and not yet measured on a GPU. cuDNN's conventions match PyTorch's:
// exponentialAverageFactor is PyTorch's momentum (running = (1 - f) running + f batch) and the
// running variance folds in the unbiased batch variance; resultSaveMean /
// resultSaveInvVariance are the batch mean and 1 / sqrt(var + eps) the CPU twin saves too.
// tessera's train forward: (channel, segment) blocks as below leave shifted sums, then every
// block adds its channel's in a fixed order and writes its y (x read twice, y written: 12 bytes
// an element); its eval forward is flat, one thread an element.
//
// Both backwards are tessera's, built on one launch shape: block (channel, segment) takes
// `per` images of one channel (batch_norm_images_per_segment: 1024 to 16384 elements, about
// 2048 blocks a layer where it is large enough), so a layer has C x segments blocks. cuDNN's
// train backward (cudnnBatchNormalizationBackward, still here behind
// TESSERA_BN_BACKWARD=cudnn) runs one block per channel: on the H200, ncu on ResNet-18 CIFAR
// b256 (docs/gpu-log.md, 2026-12-04) put its 64-channel layers at 64 blocks for 132 SMs (0.12
// waves, 25% achieved occupancy, 17% of DRAM bandwidth), 385 us a layer under replay, the
// largest batch-norm cost of the step.
//   train: stage 1, each block leaves its sums of dy and dy (x - mean) in partials (C,
//          segments, 2); stage 2, every block of the channel adds the channel's partials in
//          the same fixed order (so every block agrees, and the result is deterministic), the
//          segment-0 block writes dgamma and dbeta, and each block writes its images' dx =
//          gamma invstd (dy - mean(dy) - xhat mean(dy xhat)). x and dy are read twice.
//   eval:  cuDNN has no backward for the eval forward (statistics as constants): stage 1 adds
//          gamma invstd dy into dx and leaves the partials, stage 2 one thread per channel
//          sums its segments in order.
// The backwards accumulate into the engine's gradients or overwrite scratch outputs, as the
// `accumulate` bits say: scratch is never read, so it needs no initialising (uninitialised
// memory may hold NaN, and NaN * 0 is NaN).
// num_batches_tracked: batch_norm_count_batches, one launch for every layer of a step.
// Cost: the forwards as kernels/batch_norm.h counts; the train backward reads x and dy twice
// and reads and writes dx (24 bytes an element with accumulation, 10 FLOPs), the eval backward
// reads x and dy once and reads and writes dx (16 bytes, 5 FLOPs); both plus 8 C x segments
// bytes of partials.
#include <array>
#include <map>
#include <string>

#include "kernels/batch_norm.h"
#include "kernels/common/conv_algo.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/fast_divmod.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"

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

// The thread layout of the (channel, segment) blocks: images x positions, with a
// power-of-two row of `row_threads` = 2^row_shift >= HW (or the whole block) threads, so no
// index is divided: a thread walks its images' planes with a pointer step, and a plane of HW
// elements costs 32-bit adds only. Calls f(plane offset, position) for each of the block's
// elements.
template <typename F>
__device__ __forceinline__ void for_segment(int64_t n, int64_t c, int hw, int64_t per, int row_shift, F f) {
  const int64_t ch = blockIdx.x, seg = blockIdx.y;
  const int row_threads = 1 << row_shift;
  const int pos0 = threadIdx.x & (row_threads - 1);
  const int64_t images_per_pass = kThreads >> row_shift;
  const int64_t begin = seg * per, end = begin + per < n ? begin + per : n;
  for (int64_t img = begin + (threadIdx.x >> row_shift); img < end; img += images_per_pass) {
    const int64_t plane = (img * c + ch) * hw;
    for (int pos = pos0; pos < hw; pos += row_threads) f(plane, pos);
  }
}

// Stage 1's end in every kernel with partial sums: the block's totals of (a, b) into
// partials (C, segments, 2) at (channel, segment).
__device__ __forceinline__ void store_partials(float a, float b, float* __restrict__ partials) {
  block_sum2(a, b);
  if (threadIdx.x == 0) {
    float* out = partials + 2 * (static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y);
    out[0] = a;
    out[1] = b;
  }
}

// Stage 2's start: the channel's totals over its segments, for the first warp to call. Lane l
// adds segments l, l + 32, ... in T, then a butterfly: the same order in every block of the
// channel, so all of them agree, and the result is deterministic.
template <typename T>
__device__ __forceinline__ void channel_totals(const float* __restrict__ partials, T* a, T* b) {
  const int64_t segments = gridDim.y, base = 2 * static_cast<int64_t>(blockIdx.x) * segments;
  T sa = 0, sb = 0;
  for (int64_t s = threadIdx.x; s < segments; s += 32) {
    sa += partials[base + 2 * s];
    sb += partials[base + 2 * s + 1];
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    sa += __shfl_xor_sync(kFullWarp, sa, offset);
    sb += __shfl_xor_sync(kFullWarp, sb, offset);
  }
  *a = sa;
  *b = sb;
}

// Train backward, stage 1: block (channel, segment) leaves its sums of dy (x - mean) and dy in
// partials (C, segments, 2).
__global__ void __launch_bounds__(kThreads)
    backward_train_partials_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                   const float* __restrict__ save_mean, float* __restrict__ partials, int64_t n,
                                   int64_t c, int hw, int64_t per, int row_shift) {
  const int64_t ch = blockIdx.x;
  const float mean = save_mean[ch];
  float sum_dy = 0.0f, sum_dy_xmu = 0.0f;
  for_segment(n, c, hw, per, row_shift, [&](int64_t plane, int pos) {
    const float g = dy[plane + pos];
    sum_dy += g;
    sum_dy_xmu += g * (x[plane + pos] - mean);
  });
  store_partials(sum_dy_xmu, sum_dy, partials);
}

// Train backward, stage 2: the same blocks. The first warp adds the channel's partials
// (channel_totals, in float), then dx = k (dy - mean_dy - (x - mean) q) with k = gamma invstd
// and q = invstd mean(dy xhat), as the CPU twin computes it.
__global__ void __launch_bounds__(kThreads)
    backward_train_dx_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                             const float* __restrict__ gamma, const float* __restrict__ save_mean,
                             const float* __restrict__ save_invstd, const float* __restrict__ partials,
                             float* __restrict__ dx, float* __restrict__ dgamma, float* __restrict__ dbeta, int64_t n,
                             int64_t c, int hw, int64_t per, int row_shift, float inv_count, bool add_dx,
                             bool add_dgamma, bool add_dbeta) {
  const int64_t ch = blockIdx.x;
  __shared__ float totals[2];
  if (threadIdx.x < 32) {
    float s_xmu, s_dy;
    channel_totals(partials, &s_xmu, &s_dy);
    if (threadIdx.x == 0) totals[0] = s_xmu, totals[1] = s_dy;
  }
  __syncthreads();
  const float mean = save_mean[ch], invstd = save_invstd[ch];
  const float sum_dy_xhat = totals[0] * invstd, sum_dy = totals[1];
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    dgamma[ch] = add_dgamma ? dgamma[ch] + sum_dy_xhat : sum_dy_xhat;
    dbeta[ch] = add_dbeta ? dbeta[ch] + sum_dy : sum_dy;
  }
  const float k = gamma[ch] * invstd, mean_dy = sum_dy * inv_count, q = invstd * (sum_dy_xhat * inv_count);
  for_segment(n, c, hw, per, row_shift, [&](int64_t plane, int pos) {
    const float v = k * (dy[plane + pos] - mean_dy - (x[plane + pos] - mean) * q);
    dx[plane + pos] = add_dx ? dx[plane + pos] + v : v;
  });
}

// ---- tessera's forwards (TESSERA_BN_FORWARD=tessera; cuDNN's by default until an H200 has
// measured them) ----

// y = x scale + shift, scale = gamma invstd, shift = beta - mean scale, every rounding written
// out (one multiply, two fused multiply-adds): the train forward and the eval kernel then round
// alike, which batch_norm_forward_again (engine/ops_norm.cpp) relies on when it makes a train
// output again with two eval calls (var 1 and eps 0 make the eval's invstd exactly 1).
struct Affine {
  float scale, shift;
};
__device__ __forceinline__ Affine bn_affine(float gamma, float beta, float mean, float invstd) {
  const float scale = __fmul_rn(gamma, invstd);
  return {scale, __fmaf_rn(-mean, scale, beta)};
}

// Train forward, stage 1: block (channel, segment) leaves its sums of x - k and (x - k)^2 in
// partials (C, segments, 2), k the channel's first value (image 0, position 0): a shift inside
// the data keeps the sum of squares from cancelling when |mean| is large against the spread.
__global__ void __launch_bounds__(kThreads)
    forward_train_partials_kernel(const float* __restrict__ x, float* __restrict__ partials, int64_t n, int64_t c,
                                  int hw, int64_t per, int row_shift) {
  const int64_t ch = blockIdx.x;
  const float k = x[ch * hw];
  float s1 = 0.0f, s2 = 0.0f;
  for_segment(n, c, hw, per, row_shift, [&](int64_t plane, int pos) {
    const float d = x[plane + pos] - k;
    s1 += d;
    s2 += d * d;
  });
  store_partials(s1, s2, partials);
}

// Train forward, stage 2: the same blocks. The first warp adds the channel's partials
// (channel_totals, in double); lane 0 makes the mean and the biased variance, and the segment-0
// block saves them and updates the running statistics as the CPU twin does; then every block
// writes its y.
__global__ void __launch_bounds__(kThreads)
    forward_train_apply_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                               const float* __restrict__ beta, const float* __restrict__ partials,
                               float* __restrict__ y, float* __restrict__ running_mean,
                               float* __restrict__ running_var, float* __restrict__ save_mean,
                               float* __restrict__ save_invstd, int64_t n, int64_t c, int hw, int64_t per,
                               int row_shift, double count, float momentum, float eps) {
  const int64_t ch = blockIdx.x;
  __shared__ float stats[2];  // mean, invstd
  if (threadIdx.x < 32) {
    double s1, s2;
    channel_totals(partials, &s1, &s2);
    if (threadIdx.x == 0) {
      const double d = s1 / count, mean = static_cast<double>(x[ch * hw]) + d;
      const double var = fmax(0.0, s2 / count - d * d);
      stats[0] = static_cast<float>(mean);
      stats[1] = static_cast<float>(1.0 / sqrt(var + eps));
      if (blockIdx.y == 0) {
        save_mean[ch] = stats[0];
        save_invstd[ch] = stats[1];
        const double unbiased = count > 1 ? var * count / (count - 1) : var;
        running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * mean);
        running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
      }
    }
  }
  __syncthreads();
  const Affine a = bn_affine(gamma[ch], beta[ch], stats[0], stats[1]);
  for_segment(n, c, hw, per, row_shift,
              [&](int64_t plane, int pos) { y[plane + pos] = __fmaf_rn(x[plane + pos], a.scale, a.shift); });
}

// Eval forward: element i of N C HW (under 2^31) is of channel (i / HW) % C, found with two
// FastDivmods; its constants come from four reads the cache serves. Flat, so planes of 16
// values (ResNet layer4) keep every lane busy: cuDNN's inference kernel gave each such plane a
// block of 64 threads and reached 103 GB/s there (docs/gpu-log.md).
__global__ void forward_eval_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, const float* __restrict__ mean,
                                    const float* __restrict__ var, float* __restrict__ y, uint32_t total,
                                    FastDivmod by_hw, FastDivmod by_c, float eps) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    uint32_t ch;
    by_c.divmod(by_hw.div(i), &ch);
    const float invstd = __fdiv_rn(1.0f, __fsqrt_rn(var[ch] + eps));
    const Affine a = bn_affine(gamma[ch], beta[ch], mean[ch], invstd);
    y[i] = __fmaf_rn(x[i], a.scale, a.shift);
  }
}

// Eval backward, stage 1: block (channel, segment) adds gamma invstd dy into dx and leaves its
// sums of dy and dy xhat in partials (C, segments, 2).
__global__ void __launch_bounds__(kThreads)
    backward_eval_partials_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                  const float* __restrict__ gamma, const float* __restrict__ running_mean,
                                  const float* __restrict__ running_var, float* __restrict__ dx,
                                  float* __restrict__ partials, int64_t n, int64_t c, int hw, int64_t per, int row_shift,
                                  float eps, bool add_dx) {
  const int64_t ch = blockIdx.x;
  const float mean = running_mean[ch], invstd = 1.0f / sqrtf(running_var[ch] + eps), k = gamma[ch] * invstd;
  float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
  for_segment(n, c, hw, per, row_shift, [&](int64_t plane, int pos) {
    const float g = dy[plane + pos];
    sum_dy += g;
    sum_dy_xhat += g * (x[plane + pos] - mean) * invstd;
    dx[plane + pos] = add_dx ? dx[plane + pos] + k * g : k * g;
  });
  store_partials(sum_dy_xhat, sum_dy, partials);
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

// The (channel, segment) launch of the train forward and both backwards.
struct SegmentLaunch {
  dim3 grid;
  int64_t per = 1;    // images a segment
  int row_shift = 0;  // threads along an image row: the power of two >= HW, at most the block
};

SegmentLaunch segment_launch(int64_t n, int64_t c, int64_t hw, const char* kernel) {
  SegmentLaunch l;
  l.per = batch_norm_images_per_segment(n, c, hw);
  const int64_t segments = batch_norm_segments(n, c, hw);
  if (c > 2147483647LL || segments > 65535 || hw > 2147483647LL)
    throw_status("CUDA", "batch_norm shape exceeds the grid or 32-bit plane limits", kernel, __FILE__, __LINE__);
  while ((1 << l.row_shift) < hw && (1 << l.row_shift) < kThreads) ++l.row_shift;
  l.grid = dim3(static_cast<unsigned>(c), static_cast<unsigned>(segments > 0 ? segments : 1));
  return l;
}

// cuDNN's train backward (TESSERA_BN_BACKWARD=cudnn), to compare against.
void cudnn_backward_train(const float* x, const float* dy, const float* gamma, const float* save_mean,
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

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y, float* running_mean,
                              float* running_var, float* save_mean, float* save_invstd, int64_t n, int64_t c,
                              int64_t hw, float momentum, float eps, float* scratch) {
  if (runtime().bn_forward_cudnn) {
    const BnDescriptors& d = descriptors(n, c, hw);
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x,
                                                       x, d.x, y, d.channel, gamma, beta, momentum, running_mean,
                                                       running_var, eps, save_mean, save_invstd));
    return;
  }
  if (c == 0) return;
  if (n * hw < 1)
    throw_status("CUDA", "batch_norm's train forward needs at least one value per channel",
                 "batch_norm_forward_train", __FILE__, __LINE__);
  const SegmentLaunch l = segment_launch(n, c, hw, "batch_norm_forward_train");
  forward_train_partials_kernel<<<l.grid, kThreads, 0, runtime().stream>>>(x, scratch, n, c, static_cast<int>(hw),
                                                                           l.per, l.row_shift);
  KERNEL_LAUNCH_CHECK();
  forward_train_apply_kernel<<<l.grid, kThreads, 0, runtime().stream>>>(
      x, gamma, beta, scratch, y, running_mean, running_var, save_mean, save_invstd, n, c, static_cast<int>(hw),
      l.per, l.row_shift, static_cast<double>(n * hw), momentum, eps);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_forward_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, float* y, int64_t n, int64_t c, int64_t hw, float eps) {
  if (n * c * hw == 0) return;  // an empty batch: cuDNN refuses a zero dimension
  if (runtime().bn_forward_cudnn) {
    const BnDescriptors& d = descriptors(n, c, hw);
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnBatchNormalizationForwardInference(runtime().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, d.x,
                                                        x, d.x, y, d.channel, gamma, beta, running_mean, running_var,
                                                        eps));
    return;
  }
  const int64_t total = n * c * hw;
  const unsigned blocks = grid_for(total);
  // The grid-stride loop's last `i += gridDim.x * blockDim.x` must not pass 2^32.
  if (total > kMaxIndex32 || c > kMaxIndex32 || hw > kMaxIndex32)
    throw_status("CUDA", ("expected at most 2^31 - 1 values, found " + std::to_string(total)).c_str(),
                 "batch_norm_forward_eval", __FILE__, __LINE__);
  forward_eval_kernel<<<blocks, 256, 0, runtime().stream>>>(x, gamma, beta, running_mean, running_var, y,
                                                            static_cast<uint32_t>(total), FastDivmod(hw),
                                                            FastDivmod(c), eps);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_backward_train(const float* x, const float* dy, const float* gamma, const float* save_mean,
                               const float* save_invstd, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                               int64_t hw, float eps, uint32_t accumulate, float* scratch) {
  if (c == 0) return;
  if (n * hw < 1)
    throw_status("CUDA", "batch_norm's train backward needs at least one value per channel",
                 "batch_norm_backward_train", __FILE__, __LINE__);
  if (runtime().bn_backward_cudnn) {
    cudnn_backward_train(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, n, c, hw, eps, accumulate);
    return;
  }
  const SegmentLaunch l = segment_launch(n, c, hw, "batch_norm_backward_train");
  backward_train_partials_kernel<<<l.grid, kThreads, 0, runtime().stream>>>(x, dy, save_mean, scratch, n, c,
                                                                            static_cast<int>(hw), l.per, l.row_shift);
  KERNEL_LAUNCH_CHECK();
  backward_train_dx_kernel<<<l.grid, kThreads, 0, runtime().stream>>>(
      x, dy, gamma, save_mean, save_invstd, scratch, dx, dgamma, dbeta, n, c, static_cast<int>(hw), l.per,
      l.row_shift, static_cast<float>(1.0 / static_cast<double>(n * hw)), (accumulate & kBnAccumulateDx) != 0,
      (accumulate & kBnAccumulateDgamma) != 0, (accumulate & kBnAccumulateDbeta) != 0);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_backward_eval(const float* x, const float* dy, const float* gamma, const float* running_mean,
                              const float* running_var, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                              int64_t hw, float eps, uint32_t accumulate, float* scratch) {
  if (c == 0) return;
  const SegmentLaunch l = segment_launch(n, c, hw, "batch_norm_backward_eval");
  if (n > 0) {
    backward_eval_partials_kernel<<<l.grid, kThreads, 0, runtime().stream>>>(
        x, dy, gamma, running_mean, running_var, dx, scratch, n, c, static_cast<int>(hw), l.per, l.row_shift, eps,
        (accumulate & kBnAccumulateDx) != 0);
    KERNEL_LAUNCH_CHECK();
  }
  backward_eval_sum_kernel<<<grid_for(c), 256, 0, runtime().stream>>>(
      scratch, dgamma, dbeta, c, n > 0 ? l.grid.y : 0, (accumulate & kBnAccumulateDgamma) != 0,
      (accumulate & kBnAccumulateDbeta) != 0);
  KERNEL_LAUNCH_CHECK();
}

void batch_norm_count_batches(BatchCounters counters) {
  if (counters.count <= 0) return;
  count_batches_kernel<<<1, BatchCounters::kMax, 0, runtime().stream>>>(counters);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
