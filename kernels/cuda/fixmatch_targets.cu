// CUDA twin of kernels/fixmatch_targets.h: one thread per row (grid-stride), the per-row math
// from the header shared with the CPU. Each block sums its kept / correct flags in shared
// memory and adds them to counts with one atomicAdd each; integer sums, so the result does
// not depend on the order the blocks finish in.
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/fixmatch_targets.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void fixmatch_targets_kernel(const int32_t* labeled_labels, const int32_t* pseudo,
                                        const float* confidence, const int32_t* unlabeled_labels, int64_t b,
                                        int64_t u, float threshold, float lambda_u, int32_t* labels, float* weight,
                                        float* sup_weight, float* unsup_weight, int32_t* counts) {
  __shared__ int block_kept, block_correct;
  if (threadIdx.x == 0) {
    block_kept = 0;
    block_correct = 0;
  }
  __syncthreads();
  int kept = 0, correct = 0;
  const int64_t n = b + 2 * u;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n; row += int64_t(gridDim.x) * blockDim.x) {
    const FixMatchRowCounts c = fixmatch_row(row, labeled_labels, pseudo, confidence, unlabeled_labels, b, u,
                                             threshold, lambda_u, labels, weight, sup_weight, unsup_weight);
    kept += c.kept;
    correct += c.correct;
  }
  if (kept) atomicAdd(&block_kept, kept);
  if (correct) atomicAdd(&block_correct, correct);
  __syncthreads();
  if (threadIdx.x == 0) {
    if (block_kept) atomicAdd(&counts[0], block_kept);
    if (block_correct) atomicAdd(&counts[1], block_correct);
  }
}

}  // namespace

void fixmatch_targets(const int32_t* labeled_labels, const int32_t* pseudo, const float* confidence,
                      const int32_t* unlabeled_labels, int64_t b, int64_t u, float threshold, float lambda_u,
                      int32_t* labels, float* weight, float* sup_weight, float* unsup_weight, int32_t* counts) {
  const int64_t n = b + 2 * u;
  if (n == 0) return;
  fixmatch_targets_kernel<<<grid_for(n, kThreads), kThreads, 0, runtime().stream>>>(
      labeled_labels, pseudo, confidence, unlabeled_labels, b, u, threshold, lambda_u, labels, weight, sup_weight,
      unsup_weight, counts);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
