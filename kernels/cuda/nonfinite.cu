// CUDA twin of kernels/nonfinite.h. Grid-stride blocks of 256 threads; a block that finds a
// non-finite element (__syncthreads_or) does one atomicMin on the record, so a finite tensor
// costs a read of it and nothing else, and the id recorded is the lowest whatever the order
// the blocks ran in. Arena check: one block per chunk, as the optimizer. Commit: one thread.
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/nonfinite.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

// `lowest`: the record's step_tensor, or its step_op.
__global__ void __launch_bounds__(kThreads)
    check_kernel(const float* __restrict__ x, int64_t n, int32_t id, int32_t* lowest) {
  int found = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    found |= is_nonfinite(x[i]);
  if (__syncthreads_or(found) && threadIdx.x == 0) atomicMin(lowest, id);
}

__global__ void __launch_bounds__(kThreads)
    check_arena_kernel(const ArenaChunk* __restrict__ chunks, const float* __restrict__ x, int32_t first_tensor,
                       NonfiniteRecord* rec) {
  const ArenaChunk c = chunks[blockIdx.x];
  int found = 0;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) found |= is_nonfinite(x[i]);
  if (__syncthreads_or(found) && threadIdx.x == 0) atomicMin(&rec->step_tensor, first_tensor + c.slot);
}

__global__ void commit_kernel(NonfiniteRecord* rec, int64_t step) { nonfinite_commit_rule(rec, step); }

void launch_check(const float* x, int64_t n, int32_t id, int32_t* lowest) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads);
  check_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, runtime().stream>>>(x, n, id, lowest);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace

void nonfinite_check(const float* x, int64_t n, int32_t tensor, NonfiniteRecord* rec) {
  launch_check(x, n, tensor, &rec->step_tensor);
}

void nonfinite_check_op(const float* x, int64_t n, int32_t op, NonfiniteRecord* rec) {
  launch_check(x, n, op, &rec->step_op);
}

void nonfinite_check_arena(const ArenaChunk* chunks, int64_t num_chunks, const float* x, int32_t first_tensor,
                           NonfiniteRecord* rec) {
  if (num_chunks == 0) return;
  if (num_chunks > INT_MAX) throw_status("CUDA", "too many chunks for one grid", "nonfinite_check_arena", __FILE__, __LINE__);
  check_arena_kernel<<<static_cast<unsigned>(num_chunks), kThreads, 0, runtime().stream>>>(chunks, x, first_tensor, rec);
  KERNEL_LAUNCH_CHECK();
}

void nonfinite_commit(NonfiniteRecord* rec, int64_t step) {
  commit_kernel<<<1, 1, 0, runtime().stream>>>(rec, step);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
