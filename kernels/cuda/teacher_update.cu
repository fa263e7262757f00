// CUDA twin of kernels/teacher_update.h: one launch per arena, one block per chunk, each
// thread a group of 4 consecutive elements per iteration (float4 loads and stores; chunks
// start on multiples of 4 elements, arenas on 256 bytes). The block's slot comes from its
// chunk, so no thread searches the table.
// Draws: Philox4x32-10 computed here from kernels/common/philox.h, the same function the CPU
// twin runs and bit-identical to cuRAND's device generator (tests/philox_test.cpp): the draw
// of fragment f at step k is word f % 4 of block f / 4 of subsequence (kStreamTeacher, k).
// One block per 4 elements at element granularity and per fragment otherwise; a cuRAND state
// (curand_init + curand_uniform4) computed two. kernels/common/sts_rule.h makes the blend
// round identically on both backends.
// Index math: channel fragment ids come from teacher_group_fragments (kernels/teacher_update.h:
// ChunkRows, one 32-bit division per group of 4), not teacher_fragment's 64-bit division per
// element.
// Cost: kernels/teacher_update.h. Tests: tests/teacher_test.cpp (TeacherCuda, bit-identity).
#include <climits>
#include <cstdint>

#include "kernels/common/philox.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/teacher_update.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    teacher_update_kernel(const TeacherSlot* __restrict__ slots, const ArenaChunk* __restrict__ chunks,
                          const float* __restrict__ student, float* __restrict__ teacher, TeacherRule rule) {
  if (rule.skip && *rule.skip) return;  // a step with a non-finite value (kernels/nonfinite.h)
  const ArenaChunk c = chunks[blockIdx.x];
  const TeacherSlot s = slots[c.slot];
  const float p = rule.preserve_prob;
  const float m = rule.momentum;
  const uint64_t subsequence = philox_subsequence(kStreamTeacher, rule.step);
  const bool channel = rule.granularity == Granularity::Channel;
  const bool rows_fit = channel && ChunkRows::fits(s, c.end - c.begin);
  ChunkRows rows;
  if (rows_fit) rows = ChunkRows(s, c);
  // A thread's groups usually share a fragment (tensor: always; channel: rows are long), so
  // it keeps the last draw instead of drawing per element.
  uint64_t drawn_fragment = UINT64_MAX;
  float drawn_u = 1.0f;
  for (int64_t g = c.begin + 4 * int64_t(threadIdx.x); g < c.end; g += 4 * int64_t(blockDim.x)) {
    const int n = c.end - g < 4 ? static_cast<int>(c.end - g) : 4;
    float u[4] = {1.0f, 1.0f, 1.0f, 1.0f};  // p = 0: u = 1 is never kept, no draws needed
    if (p > 0.0f) {
      if (rule.granularity == Granularity::Element) {
        // Fragment id = arena index and g is a multiple of 4: block g / 4 holds the draws
        // of g .. g + 3.
        const Philox4 w = philox_block(rule.seed, subsequence, static_cast<uint64_t>(g) >> 2);
        u[0] = philox_to_uniform(w.x);
        u[1] = philox_to_uniform(w.y);
        u[2] = philox_to_uniform(w.z);
        u[3] = philox_to_uniform(w.w);
      } else {
        uint64_t frag[4];
        teacher_group_fragments(s, rows, rows_fit, rule.granularity, g, frag);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j >= n) break;
          if (frag[j] != drawn_fragment) {
            drawn_u = philox_uniform_at(rule.seed, subsequence, frag[j]);
            drawn_fragment = frag[j];
          }
          u[j] = drawn_u;
        }
      }
    }
    bool any_update = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) any_update |= j < n && !sts_keep(u[j], p);
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
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < n) teacher[g + j] = sts_rule(teacher[g + j], student[g + j], u[j], p, m);
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
