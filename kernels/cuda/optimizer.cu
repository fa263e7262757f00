// CUDA twin of kernels/optimizer.h: one block per chunk, consecutive threads on consecutive
// elements (coalesced), the slot's settings read once per block. LARS's norms: each block
// reduces its chunk (warp shuffles, then across warps) into two partial sums; then one block
// per slot turns its partials into the slot's trust ratio in the fixed order of
// lars_slot_sums (kernels/common/optimizer_rules.h, the CPU twin's too), and the update reads
// the ratio of its chunk's slot. No atomics, and the result does not depend on scheduling.
// (The update used to have thread 0 of every block re-sum all of its slot's partials: for a
// slot of K chunks, K blocks each reading K partials serially.)
#include <cmath>
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/optimizer.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;
static_assert(kThreads == kLarsChunkThreads, "the CPU twin sums a chunk's norms in this block's order");

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(const OptimizerSlot* __restrict__ slots, const ArenaChunk* __restrict__ chunks, float* __restrict__ w,
               const float* __restrict__ g, float* __restrict__ buf, SgdParams p) {
  if (p.skip && *p.skip) return;  // a step with a non-finite value (kernels/nonfinite.h)
  const ArenaChunk c = chunks[blockIdx.x];
  const float wd = slots[c.slot].weight_decay;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x)
    sgd_element(w[i], buf[i], g[i], wd, p.lr, p.momentum, p.nesterov);
}

// Sum of a and b over the block; the result is valid in thread 0.
__device__ float2 block_sum(float a, float b) {
  __shared__ float2 warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = make_float2(a, b);
  __syncthreads();
  float2 total = make_float2(0.0f, 0.0f);
  if (threadIdx.x == 0)
    for (int k = 0; k < kThreads / 32; ++k) {
      total.x += warp_sums[k].x;
      total.y += warp_sums[k].y;
    }
  return total;
}

__global__ void __launch_bounds__(kThreads)
    lars_norms_kernel(const ArenaChunk* __restrict__ chunks, const float* __restrict__ w, const float* __restrict__ g,
                      float* __restrict__ partials) {
  const ArenaChunk c = chunks[blockIdx.x];
  float ww = 0.0f, gg = 0.0f;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
    ww = fmaf(w[i], w[i], ww);
    gg = fmaf(g[i], g[i], gg);
  }
  const float2 total = block_sum(ww, gg);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = total.x;
    partials[2 * blockIdx.x + 1] = total.y;
  }
}

// One block of kLarsLanes threads per slot: lars_slot_sums in shared memory, then lars_trust.
// trust (num_slots, 2): the ratio and the weight decay that applies.
__global__ void __launch_bounds__(kLarsLanes)
    lars_trust_kernel(const OptimizerSlot* __restrict__ slots, const float* __restrict__ partials,
                      float* __restrict__ trust, LarsParams p) {
  __shared__ float a[kLarsLanes], b[kLarsLanes];
  const OptimizerSlot s = slots[blockIdx.x];
  const int t = threadIdx.x;
  float ww = 0.0f, gg = 0.0f;
  for (int32_t j = t; j < s.num_chunks; j += kLarsLanes) {
    ww += partials[2 * (s.first_chunk + j)];
    gg += partials[2 * (s.first_chunk + j) + 1];
  }
  a[t] = ww;
  b[t] = gg;
  __syncthreads();
  for (int stride = kLarsLanes / 2; stride > 0; stride >>= 1) {
    if (t < stride) {
      a[t] += a[t + stride];
      b[t] += b[t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    float wd = 0.0f;
    trust[2 * blockIdx.x] = lars_trust(sqrtf(a[0]), sqrtf(b[0]), s.weight_decay, p.eta, p.eps, s.adapt != 0,
                                          p.clip_lr != 0, p.lr, &wd);
    trust[2 * blockIdx.x + 1] = wd;
  }
}

__global__ void __launch_bounds__(kThreads)
    lars_kernel(const ArenaChunk* __restrict__ chunks, float* __restrict__ w, const float* __restrict__ g,
                float* __restrict__ buf, const float* __restrict__ trust, LarsParams p) {
  if (p.skip && *p.skip) return;
  const ArenaChunk c = chunks[blockIdx.x];
  const float ratio = trust[2 * c.slot], wd = trust[2 * c.slot + 1];
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x)
    lars_element(w[i], buf[i], g[i], wd, ratio, p.lr, p.momentum, p.nesterov);
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(const OptimizerSlot* __restrict__ slots, const ArenaChunk* __restrict__ chunks, float* __restrict__ w,
                 const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, AdamWParams p) {
  if (p.skip && *p.skip) return;
  // The bias corrections of step *p.steps, once per block (a few dozen double multiplications).
  __shared__ float step_size, bc2_sqrt;
  if (threadIdx.x == 0) adamw_bias_corrections(p.lr, p.beta1, p.beta2, *p.steps, &step_size, &bc2_sqrt);
  __syncthreads();
  const ArenaChunk c = chunks[blockIdx.x];
  const float decay = fmaf(-p.lr, slots[c.slot].weight_decay, 1.0f);  // 1 - lr * wd, fused on both backends
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x)
    adamw_element(w[i], m[i], v[i], g[i], decay, p.beta1, p.beta2, p.eps, step_size, bc2_sqrt);
}

__global__ void count_step_kernel(int64_t* steps, const int32_t* skip) {
  if (!(skip && *skip)) ++*steps;
}

unsigned grid_of(int64_t num_chunks, const char* kernel) {
  if (num_chunks > INT_MAX) throw_status("CUDA", "too many chunks for one grid", kernel, __FILE__, __LINE__);
  return static_cast<unsigned>(num_chunks);
}

}  // namespace

void optimizer_count_step(int64_t* steps, const int32_t* skip) {
  count_step_kernel<<<1, 1, 0, runtime().stream>>>(steps, skip);
  KERNEL_LAUNCH_CHECK();
}

void sgd_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
              float* buf, SgdParams p) {
  if (num_chunks == 0) return;
  sgd_kernel<<<grid_of(num_chunks, "sgd_step"), kThreads, 0, runtime().stream>>>(slots, chunks, w, g, buf, p);
  KERNEL_LAUNCH_CHECK();
}

void lars_norms(const OptimizerSlot*, const ArenaChunk* chunks, int64_t num_chunks, const float* w, const float* g,
                float* partials) {
  if (num_chunks == 0) return;
  lars_norms_kernel<<<grid_of(num_chunks, "lars_norms"), kThreads, 0, runtime().stream>>>(chunks, w, g, partials);
  KERNEL_LAUNCH_CHECK();
}

void lars_trust_ratios(const OptimizerSlot* slots, int64_t num_slots, const float* partials, float* trust,
                       LarsParams p) {
  if (num_slots == 0) return;
  lars_trust_kernel<<<grid_of(num_slots, "lars_trust_ratios"), kLarsLanes, 0, runtime().stream>>>(slots, partials,
                                                                                                  trust, p);
  KERNEL_LAUNCH_CHECK();
}

void lars_step(const OptimizerSlot*, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
               float* buf, const float* trust, LarsParams p) {
  if (num_chunks == 0) return;
  lars_kernel<<<grid_of(num_chunks, "lars_step"), kThreads, 0, runtime().stream>>>(chunks, w, g, buf, trust, p);
  KERNEL_LAUNCH_CHECK();
}

void adamw_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
                float* m, float* v, AdamWParams p) {
  if (num_chunks == 0) return;
  adamw_kernel<<<grid_of(num_chunks, "adamw_step"), kThreads, 0, runtime().stream>>>(slots, chunks, w, g, m, v, p);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
