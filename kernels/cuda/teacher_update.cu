// CUDA twin of kernels/teacher_update.h: one launch per arena, one block per chunk, each
// thread a group of 4 consecutive elements per iteration (float4 loads and stores; chunks
// start on multiples of 4 elements, arenas on 256 bytes). The block's slot comes from its
// chunk, so no thread searches the table. Draws come from cuRAND's device Philox with the
// same (seed, subsequence, offset) as the CPU twin, so both backends keep and update the same
// fragments, and kernels/common/sts_rule.h makes the arithmetic round identically.
#include <curand_kernel.h>

#include <climits>
#include <cstdint>

#include "kernels/common/philox.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/teacher_update.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;

// The draw of fragment f: curand_init(seed, philox_subsequence(kStreamTeacher, step), f),
// then curand_uniform, which is what kernels::philox_uniform computes on the host.
__device__ float fragment_draw(const TeacherRule& rule, uint64_t fragment) {
  curandStatePhilox4_32_10_t state;
  curand_init(rule.seed, philox_subsequence(kStreamTeacher, rule.step), fragment, &state);
  return curand_uniform(&state);
}

__global__ void __launch_bounds__(kThreads)
    teacher_update_kernel(const TeacherSlot* __restrict__ slots, const ArenaChunk* __restrict__ chunks,
                          const float* __restrict__ student, float* __restrict__ teacher, TeacherRule rule) {
  const ArenaChunk c = chunks[blockIdx.x];
  const TeacherSlot s = slots[c.slot];
  const float p = rule.preserve_prob;
  const float m = rule.momentum;
  // A thread's groups usually share a fragment (tensor: always; channel: rows are long), so
  // it keeps the last draw instead of drawing per element.
  uint64_t drawn_fragment = UINT64_MAX;
  float drawn_u = 1.0f;
  for (int64_t g = c.begin + 4 * int64_t(threadIdx.x); g < c.end; g += 4 * int64_t(blockDim.x)) {
    const int n = c.end - g < 4 ? static_cast<int>(c.end - g) : 4;
    float u[4] = {1.0f, 1.0f, 1.0f, 1.0f};  // p = 0: u = 1 is never kept, no draws needed
    if (p > 0.0f) {
      if (rule.granularity == Granularity::Element) {
        // Fragment id = arena index and g is a multiple of 4: one Philox block holds the draws
        // of g .. g + 3 (curand_uniform4 = four successive curand_uniform).
        curandStatePhilox4_32_10_t state;
        curand_init(rule.seed, philox_subsequence(kStreamTeacher, rule.step), static_cast<uint64_t>(g), &state);
        const float4 r = curand_uniform4(&state);
        u[0] = r.x;
        u[1] = r.y;
        u[2] = r.z;
        u[3] = r.w;
      } else {
        for (int j = 0; j < n; ++j) {
          const uint64_t f = teacher_fragment(s, rule.granularity, g + j);
          if (f != drawn_fragment) {
            drawn_u = fragment_draw(rule, f);
            drawn_fragment = f;
          }
          u[j] = drawn_u;
        }
      }
    }
    bool any_update = false;
    for (int j = 0; j < n; ++j) any_update |= !sts_keep(u[j], p);
    if (!any_update) continue;  // a kept group costs no memory traffic
    if (n == 4) {
      float4 t = *reinterpret_cast<const float4*>(teacher + g);
      const float4 x = __ldg(reinterpret_cast<const float4*>(student + g));
      t.x = sts_rule(t.x, x.x, u[0], p, m);
      t.y = sts_rule(t.y, x.y, u[1], p, m);
      t.z = sts_rule(t.z, x.z, u[2], p, m);
      t.w = sts_rule(t.w, x.w, u[3], p, m);
      *reinterpret_cast<float4*>(teacher + g) = t;
    } else {  // the last group of a slot whose size is not a multiple of 4: stop at the slot end
      for (int j = 0; j < n; ++j) teacher[g + j] = sts_rule(teacher[g + j], student[g + j], u[j], p, m);
    }
  }
}

}  // namespace

void teacher_update(const TeacherSlot* slots, const ArenaChunk* chunks, int64_t num_chunks,
                    const float* student, float* teacher, TeacherRule rule) {
  if (num_chunks == 0) return;
  if (num_chunks > INT_MAX)
    throw_status("CUDA", "too many chunks for one grid", "teacher_update", __FILE__, __LINE__);
  teacher_update_kernel<<<static_cast<unsigned>(num_chunks), kThreads, 0, runtime().stream>>>(
      slots, chunks, student, teacher, rule);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
