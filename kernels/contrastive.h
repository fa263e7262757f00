// Contrastive kernels for MoCo (apps/moco): the InfoNCE loss against a queue of negative keys
// and the queue's ring-buffer enqueue. T is the temperature; the kernels take 1 / T.
//
//   infonce_forward   logits_i = [q_i . k_i, q_i . queue_0, ..., q_i . queue_{K-1}] / T, the
//                     positive at index 0; row_i = lse_i - logits_i0 (cross-entropy with label
//                     0, lse after subtracting the row max); correct_i = 1 when logits_i0 is the
//                     row's first maximum (argmax == 0), else 0. Keeps logits (n, 1 + K) and
//                     lse (n) for the backward. 2 n (K + 1) d FLOPs (plain loops on the CPU,
//                     one cuBLAS GEMM on CUDA) + n (K + 1) exp; reads q, k, queue
//                     (4 (2 n + K) d bytes), writes 4 n (K + 1).
//   infonce_backward  gradient to the queries only (keys and queue are constants):
//                     dlogits_ij = s (softmax_ij - [j == 0]) with s = scale dloss[0] (written,
//                     (n, 1 + K) scratch), dq_i += (1 / T) sum_j dlogits_ij key_j, key_0 = k_i,
//                     key_{j+1} = queue_j. 2 n (K + 1) d FLOPs (one GEMM) + n (K + 1) exp.
//   queue_enqueue     queue[(ptr + i) mod K] = keys[i] for i < n, then ptr = (ptr + n) mod K, with
//                     ptr (the ring's write position) a device int: the ring buffer and its
//                     position stay in the device's memory (no host round trip). When the skip
//                     flag is set (--on-nonfinite skip dropped the step) neither the rows nor the
//                     position change, so a skipped step leaves the queue exactly as it was; a
//                     position kept on the host could not see the flag without a sync.
//                     8 n d + 8 bytes.
// CPU: OpenMP over rows, dot products and row sums in double. CUDA: cuBLAS SGEMM for the
// (n, K) block of logits and for dq, one warp per row for the rest (kernels/cuda/warp.cuh).
// Tests: tests/ops_contrastive_test.cpp (float64 reference, gradient checks, the positive
// index and temperature pinned, ring wrap-around; CUDA vs CPU where a GPU exists).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"

#define TS_CONTRASTIVE_KERNELS                                                                   \
  /* q, k (n, d), queue (kq, d), logits (n, 1 + kq), row_loss, lse, correct (n) */               \
  void infonce_forward(const float* q, const float* k, const float* queue, float* logits,        \
                       float* row_loss, float* lse, float* correct, int64_t n, int64_t kq,       \
                       int64_t d, float inv_temp);                                               \
  /* k (n, d), queue (kq, d), logits, dlogits (n, 1 + kq), lse (n), dloss (1), dq (n, d) */      \
  void infonce_backward(const float* k, const float* queue, const float* logits, const float* lse, \
                        const float* dloss, float scale, float* dlogits, float* dq, int64_t n,   \
                        int64_t kq, int64_t d, float inv_temp);                                  \
  /* queue (kq, d), keys (n, d), ptr (1) in [0, kq), advanced; skip: device flag or null */   \
  void queue_enqueue(float* queue, const float* keys, int64_t kq, int64_t n, int64_t d, int32_t* ptr, \
                     const int32_t* skip);

namespace kernels::cpu {
TS_CONTRASTIVE_KERNELS
}
namespace kernels::cuda {
TS_CONTRASTIVE_KERNELS
}
#undef TS_CONTRASTIVE_KERNELS

// Costs for the profiler (kernels/common/cost.h), from the counts above.
namespace kernels {
TS_KERNEL_COST(infonce_forward, const float*, const float*, const float*, float*, float*, float*, float*, int64_t n,
               int64_t kq, int64_t d, float) {
  return {4.0 * (2.0 * n + kq) * d + 4.0 * n * (kq + 1) + 12.0 * n, 2.0 * n * (kq + 1) * d + 2.0 * n * (kq + 1)};
}
TS_KERNEL_COST(infonce_backward, const float*, const float*, const float*, const float*, const float*, float, float*,
               float*, int64_t n, int64_t kq, int64_t d, float) {
  return {4.0 * (3.0 * n + kq) * d + 8.0 * n * (kq + 1) + 4.0 * n, 2.0 * n * (kq + 1) * d + 3.0 * n * (kq + 1)};
}
TS_KERNEL_COST(queue_enqueue, float*, const float*, int64_t, int64_t n, int64_t d, int32_t*, const int32_t*) {
  return {8.0 * n * d + 8.0, 0.0};
}
}  // namespace kernels
