// The fused teacher update: one pass over a whole parameter (or buffer) arena applying the
// STS rule of kernels/common/sts_rule.h to every element of every slot.
//
// Work: the arena is given as chunks (kernels/common/arena_chunk.h); on the GPU one block per
// chunk, each thread a group of 4 elements (16-byte loads and stores). Every element of a
// fragment sees the same draw u = Philox(seed, kStreamTeacher, step, fragment): cuRAND's
// device generator on the GPU, its bit-identical CPU twin in kernels/common/philox.h. There is
// no mask buffer and no host round trip. Gaps between slots are never read or written.
// Cost per parameter: read student and teacher, write teacher = 12 bytes and 3 FLOPs when the
// fragment is updated; a kept fragment is neither read nor written (0 bytes). Philox: one
// block (10 rounds) per fragment per thread for tensor / channel, one per 4 elements for
// element granularity; none at all when p = 0.
// Tests: tests/teacher_test.cpp (invariants, statistics, canaries; CUDA vs CPU bit-identity).
#pragma once

#include <cstdint>

#include "kernels/common/arena_chunk.h"
#include "kernels/common/sts_rule.h"

#define TS_TEACHER_KERNELS                                                                    \
  /* Chunks of at most kTeacherChunk elements: one CUDA block (256 threads x 4 groups of 4). */ \
  constexpr int64_t kTeacherChunk = 4096;                                                     \
  /* teacher[i] = sts_rule(teacher[i], student[i], u(fragment(i)), p, m) for i in the chunks. \
     slots (num_slots), chunks (num_chunks): tables on this backend's device.                 \
     student, teacher (arena_numel) with the same layout. */                                  \
  void teacher_update(const TeacherSlot* slots, const ArenaChunk* chunks, int64_t num_chunks,  \
                      const float* student, float* teacher, TeacherRule rule);

namespace kernels::cpu {
TS_TEACHER_KERNELS
}
namespace kernels::cuda {
TS_TEACHER_KERNELS
}
#undef TS_TEACHER_KERNELS
