// CUDA twin of kernels/contrastive.h. The (n, K) block of negative logits and the queue's
// share of dq are GEMMs (cuBLAS, the handle's math mode, on the engine stream); the positive
// logit, the row softmax and the positive key's share of dq are one warp per row (blocks of
// 32 x kWarpRows, grid-stride over rows); the enqueue copies key rows into the ring (rows on
// the grid, O(n d) bytes) and a one-thread launch advances its device-side position.
#include <cmath>

#include "kernels/common/softmax.h"
#include "kernels/contrastive.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/warp.cuh"

namespace kernels::cuda {

namespace {

#define TS_FOR_EACH_ROW(i, n) \
  for (int64_t i = blockIdx.x * int64_t(kWarpRows) + threadIdx.y; i < (n); i += int64_t(gridDim.x) * kWarpRows)

int blas_int(int64_t v) { return static_cast<int>(v); }  // the launcher checks sizes < 2^31

// After the GEMM filled logits[:, 1:]: the positive logit, lse, the row loss and correct.
__global__ void infonce_rows_kernel(const float* q, const float* k, float* logits, float* row_loss, float* lse,
                                    float* correct, int64_t n, int64_t kq, int64_t d, float inv_temp) {
  const int64_t width = kq + 1;
  TS_FOR_EACH_ROW(i, n) {
    const float *qi = q + i * d, *ki = k + i * d;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += 32) dot += qi[c] * ki[c];
    const float pos = warp_sum(dot) * inv_temp;
    float* x = logits + i * width;
    float m = pos;
    for (int64_t j = 1 + threadIdx.x; j < width; j += 32) m = fmaxf(m, x[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int64_t j = 1 + threadIdx.x; j < width; j += 32) sum += expf(x[j] - m);
    sum = warp_sum(sum) + expf(pos - m);
    if (threadIdx.x == 0) {
      x[0] = pos;
      lse[i] = logsumexp(m, sum);
      row_loss[i] = lse[i] - pos;
      correct[i] = pos >= m ? 1.0f : 0.0f;
    }
  }
}

// dlogits = s (softmax - onehot(0)), and dq_i += (1 / T) dlogits_i0 k_i.
__global__ void infonce_grad_rows_kernel(const float* k, const float* logits, const float* lse, const float* dloss,
                                         float scale, float* dlogits, float* dq, int64_t n, int64_t kq, int64_t d,
                                         float inv_temp) {
  const float s = scale * dloss[0];
  const int64_t width = kq + 1;
  TS_FOR_EACH_ROW(i, n) {
    const float* x = logits + i * width;
    float* dx = dlogits + i * width;
    for (int64_t j = threadIdx.x; j < width; j += 32)
      dx[j] = s * cross_entropy_grad(x[j], lse[i], j == 0 ? 1.0f : 0.0f, 1.0f);
    const float g0 = s * cross_entropy_grad(x[0], lse[i], 1.0f, 1.0f) * inv_temp;
    for (int64_t c = threadIdx.x; c < d; c += 32) dq[i * d + c] += g0 * k[i * d + c];
  }
}

// Key row i goes to ring row (at + i) % K. Rows are planes on the grid (plane_launch): one
// modulo per row, 32-bit column indices, no division per element.
__global__ void queue_enqueue_kernel(float* queue, const float* keys, int64_t kq, int64_t n, int d,
                                     const int32_t* ptr, const int32_t* skip) {
  if (skip && *skip) return;
  const int64_t at = *ptr;
  for (int64_t i = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; i < n; i += int64_t(gridDim.y) * blockDim.y) {
    float* dst = queue + ((at + i) % kq) * d;
    const float* src = keys + i * d;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < d; c += gridDim.x * blockDim.x) dst[c] = src[c];
  }
}

// A launch of its own after the copy (stream order): every copy thread has read the position
// before it moves, which one grid could only ensure with a grid-wide barrier.
__global__ void queue_advance_kernel(int32_t* ptr, int64_t kq, int64_t n, const int32_t* skip) {
  if (skip && *skip) return;
  *ptr = static_cast<int32_t>((*ptr + n) % kq);
}

#undef TS_FOR_EACH_ROW

const dim3 kRowBlock(32, kWarpRows);

}  // namespace

void infonce_forward(const float* q, const float* k, const float* queue, float* logits, float* row_loss, float* lse,
                     float* correct, int64_t n, int64_t kq, int64_t d, float inv_temp) {
  if (n == 0) return;
  // Row-major logits (n, K + 1) seen column-major is (K + 1) x n with ld K + 1; its rows 1..K
  // are queue (K x d) times q^T (d x n): C = op_T(queue as d x K) op_N(q as d x n).
  const float zero = 0.0f;
  CUBLAS_CHECK(cublasSgemm(runtime().cublas, CUBLAS_OP_T, CUBLAS_OP_N, blas_int(kq), blas_int(n), blas_int(d),
                           &inv_temp, queue, blas_int(d), q, blas_int(d), &zero, logits + 1, blas_int(kq + 1)));
  infonce_rows_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(q, k, logits, row_loss, lse, correct, n, kq,
                                                                          d, inv_temp);
  KERNEL_LAUNCH_CHECK();
}

void infonce_backward(const float* k, const float* queue, const float* logits, const float* lse, const float* dloss,
                      float scale, float* dlogits, float* dq, int64_t n, int64_t kq, int64_t d, float inv_temp) {
  if (n == 0) return;
  infonce_grad_rows_kernel<<<row_blocks(n), kRowBlock, 0, runtime().stream>>>(k, logits, lse, dloss, scale, dlogits,
                                                                               dq, n, kq, d, inv_temp);
  KERNEL_LAUNCH_CHECK();
  // dq (column-major d x n, ld d) += (1 / T) queue^T (d x K) dlogits[:, 1:]^T (K x n, ld K + 1).
  const float one = 1.0f;
  CUBLAS_CHECK(cublasSgemm(runtime().cublas, CUBLAS_OP_N, CUBLAS_OP_N, blas_int(d), blas_int(n), blas_int(kq),
                           &inv_temp, queue, blas_int(d), dlogits + 1, blas_int(kq + 1), &one, dq, blas_int(d)));
}

void queue_enqueue(float* queue, const float* keys, int64_t kq, int64_t n, int64_t d, int32_t* ptr,
                   const int32_t* skip) {
  if (n == 0) return;
  const PlaneLaunch l = plane_launch(n, d, "queue_enqueue");  // d is then under 2^31
  queue_enqueue_kernel<<<l.grid, l.block, 0, runtime().stream>>>(queue, keys, kq, n, static_cast<int>(d), ptr, skip);
  KERNEL_LAUNCH_CHECK();
  queue_advance_kernel<<<1, 1, 0, runtime().stream>>>(ptr, kq, n, skip);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
