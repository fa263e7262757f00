// CUDA twin of kernels/loss.h: one warp per row (blocks of 32 x kWarpRows, grid-stride over
// rows), row sums and maxima by warp shuffles (kernels/cuda/warp.cuh).
#include <cmath>
#include <string>

#include "kernels/common/l2norm.h"
#include "kernels/common/softmax.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/loss.h"

namespace kernels::cuda {

namespace {

#define TS_FOR_EACH_ROW(i, n) \
  for (int64_t i = blockIdx.x * int64_t(kWarpRows) + threadIdx.y; i < (n); i += int64_t(gridDim.x) * kWarpRows)

struct CosineParts {
  float p_norm, z_norm, dot;
};

__device__ CosineParts cosine_parts(const float* p, const float* z, int64_t d) {
  float pp = 0.0f, zz = 0.0f, pz = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += 32) {
    pp += p[j] * p[j];
    zz += z[j] * z[j];
    pz += p[j] * z[j];
  }
  return {sqrtf(warp_sum(pp)), sqrtf(warp_sum(zz)), warp_sum(pz)};
}

// log sum exp of one row, the same value in every lane.
__device__ float row_logsumexp(const float* x, int64_t k) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < k; j += 32) m = fmaxf(m, x[j]);
  m = warp_max(m);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += 32) sum += expf(x[j] - m);
  return logsumexp(m, warp_sum(sum));
}

__global__ void byol_loss_forward_kernel(const float* p, const float* z, float* row_loss, int64_t n, int64_t d,
                                         float eps) {
  TS_FOR_EACH_ROW(i, n) {
    const CosineParts c = cosine_parts(p + i * d, z + i * d, d);
    const float cos = c.dot / (l2_denominator(c.p_norm, eps) * l2_denominator(c.z_norm, eps));
    if (threadIdx.x == 0) row_loss[i] = 2.0f - 2.0f * cos;
  }
}

__global__ void byol_loss_backward_kernel(const float* p, const float* z, const float* dloss, float scale,
                                          float* dp, float* dz, int64_t n, int64_t d, float eps) {
  const float g = -2.0f * scale * dloss[0];  // see kernels/cpu/loss.cpp
  TS_FOR_EACH_ROW(i, n) {
    const float *pi = p + i * d, *zi = z + i * d;
    const CosineParts c = cosine_parts(pi, zi, d);
    const float p_den = l2_denominator(c.p_norm, eps), z_den = l2_denominator(c.z_norm, eps);
    const float cos = c.dot / (p_den * z_den);
    for (int64_t j = threadIdx.x; j < d; j += 32) {
      const float pn = pi[j] / p_den, zn = zi[j] / z_den;
      if (dp) dp[i * d + j] += l2_normalize_grad(pn, g * zn, g * cos, c.p_norm, eps);
      if (dz) dz[i * d + j] += l2_normalize_grad(zn, g * pn, g * cos, c.z_norm, eps);
    }
  }
}

__global__ void cross_entropy_forward_kernel(const float* logits, const int32_t* labels, const float* weight,
                                             float* row_loss, float* lse, int64_t n, int64_t k) {
  TS_FOR_EACH_ROW(i, n) {
    const float* x = logits + i * k;
    const float row_lse = row_logsumexp(x, k);
    if (threadIdx.x == 0) {
      const int32_t label = labels[i];
      const float w = weight ? weight[i] : 1.0f;
      lse[i] = row_lse;
      row_loss[i] = label >= 0 && label < k ? w * (row_lse - x[label]) : NAN;
    }
  }
}

__global__ void cross_entropy_backward_kernel(const float* logits, const int32_t* labels, const float* weight,
                                              const float* lse, const float* dloss, float scale, float* dlogits,
                                              int64_t n, int64_t k) {
  const float g = scale * dloss[0];
  TS_FOR_EACH_ROW(i, n) {
    const float gw = g * (weight ? weight[i] : 1.0f);
    const int32_t label = labels[i];
    for (int64_t j = threadIdx.x; j < k; j += 32) {
      const float t = j == label ? 1.0f : 0.0f;
      dlogits[i * k + j] += gw * cross_entropy_grad(logits[i * k + j], lse[i], t, 1.0f);
    }
  }
}

__global__ void cross_entropy_soft_forward_kernel(const float* logits, const float* targets, float* row_loss,
                                                  float* lse, int64_t n, int64_t k) {
  TS_FOR_EACH_ROW(i, n) {
    const float *x = logits + i * k, *t = targets + i * k;
    const float row_lse = row_logsumexp(x, k);
    float loss = 0.0f;
    for (int64_t j = threadIdx.x; j < k; j += 32) loss += t[j] * (row_lse - x[j]);
    loss = warp_sum(loss);
    if (threadIdx.x == 0) {
      lse[i] = row_lse;
      row_loss[i] = loss;
    }
  }
}

__global__ void cross_entropy_soft_backward_kernel(const float* logits, const float* targets, const float* lse,
                                                   const float* dloss, float scale, float* dlogits, int64_t n,
                                                   int64_t k) {
  const float g = scale * dloss[0];
  TS_FOR_EACH_ROW(i, n) {
    const float* t = targets + i * k;
    float t_sum = 0.0f;
    for (int64_t j = threadIdx.x; j < k; j += 32) t_sum += t[j];
    t_sum = warp_sum(t_sum);
    for (int64_t j = threadIdx.x; j < k; j += 32)
      dlogits[i * k + j] += g * cross_entropy_grad(logits[i * k + j], lse[i], t[j], t_sum);
  }
}

__global__ void argmax_max_prob_kernel(const float* logits, int32_t* argmax, float* max_prob, int64_t n,
                                       int64_t k) {
  TS_FOR_EACH_ROW(i, n) {
    const float* x = logits + i * k;
    // Each lane's first maximum, then a shuffle reduction that prefers the lower index on
    // ties, so the answer is the row's first maximum as on the CPU. NaN as on the CPU
    // (`x[j] > x[best]` from best = 0): a NaN at index 0 is the answer (nothing compares
    // greater), a NaN elsewhere is never taken. So only lane 0 may start from a NaN; another
    // lane starting from one would keep it and hide its partners' values in the reduction.
    float best = -INFINITY;
    int best_j = static_cast<int>(k);  // k <= 2^31 - 33, checked by the launcher
    if (threadIdx.x < k && (threadIdx.x == 0 || !isnan(x[threadIdx.x]))) {
      best = x[threadIdx.x];
      best_j = static_cast<int>(threadIdx.x);
    }
    for (int j = static_cast<int>(threadIdx.x) + 32; j < k; j += 32)
      if (x[j] > best) {
        best = x[j];
        best_j = j;
      }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other = __shfl_xor_sync(kFullWarp, best, offset);
      const int other_j = __shfl_xor_sync(kFullWarp, best_j, offset);
      if (other > best || (other == best && other_j < best_j)) {
        best = other;
        best_j = other_j;
      }
    }
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < k; j += 32) sum += expf(x[j] - best);
    sum = warp_sum(sum);
    if (threadIdx.x == 0) {
      argmax[i] = best_j;
      max_prob[i] = 1.0f / sum;
    }
  }
}

#undef TS_FOR_EACH_ROW

const dim3 kRowBlock(32, kWarpRows);

}  // namespace

void byol_loss_forward(const float* p, const float* z, float* row_loss, int64_t n, int64_t d, float eps) {
  if (n == 0) return;
  byol_loss_forward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(p, z, row_loss, n, d, eps);
  KERNEL_LAUNCH_CHECK();
}

void byol_loss_backward(const float* p, const float* z, const float* dloss, float scale, float* dp, float* dz,
                        int64_t n, int64_t d, float eps) {
  if (n == 0 || (!dp && !dz)) return;
  byol_loss_backward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(p, z, dloss, scale, dp, dz, n, d,
                                                                               eps);
  KERNEL_LAUNCH_CHECK();
}

void cross_entropy_forward(const float* logits, const int32_t* labels, const float* weight, float* row_loss,
                           float* lse, int64_t n, int64_t k) {
  if (n == 0) return;
  cross_entropy_forward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(logits, labels, weight, row_loss,
                                                                                  lse, n, k);
  KERNEL_LAUNCH_CHECK();
}

void cross_entropy_backward(const float* logits, const int32_t* labels, const float* weight, const float* lse,
                            const float* dloss, float scale, float* dlogits, int64_t n, int64_t k) {
  if (n == 0) return;
  cross_entropy_backward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(logits, labels, weight, lse,
                                                                                   dloss, scale, dlogits, n, k);
  KERNEL_LAUNCH_CHECK();
}

void cross_entropy_soft_forward(const float* logits, const float* targets, float* row_loss, float* lse, int64_t n,
                                int64_t k) {
  if (n == 0) return;
  cross_entropy_soft_forward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(logits, targets, row_loss,
                                                                                       lse, n, k);
  KERNEL_LAUNCH_CHECK();
}

void cross_entropy_soft_backward(const float* logits, const float* targets, const float* lse, const float* dloss,
                                 float scale, float* dlogits, int64_t n, int64_t k) {
  if (n == 0) return;
  cross_entropy_soft_backward_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(
      logits, targets, lse, dloss, scale, dlogits, n, k);
  KERNEL_LAUNCH_CHECK();
}

void argmax_max_prob(const float* logits, int32_t* argmax, float* max_prob, int64_t n, int64_t k) {
  if (n == 0) return;
  if (k < 1 || k > (int64_t{1} << 31) - 33)  // 32-bit column indices, whose last `j += 32` stays in int
    throw_status("CUDA", ("expected 1 to 2^31 - 33 classes, found " + std::to_string(k)).c_str(), "argmax_max_prob",
                 __FILE__, __LINE__);
  argmax_max_prob_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(logits, argmax, max_prob, n, k);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
