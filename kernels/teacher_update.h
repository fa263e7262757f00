// The fused teacher update: one pass over a whole parameter (or buffer) arena applying the
// STS rule of kernels/common/sts_rule.h to every element of every slot.
//
// Work: the arena is given as chunks (kernels/common/arena_chunk.h); on the GPU one block per
// chunk, each thread a group of 4 elements (16-byte loads and stores). Every element of a
// fragment sees the same draw u = Philox(seed, kStreamTeacher, step, fragment), computed by
// kernels/common/philox.h on both backends (bit-identical to cuRAND's device generator). There
// is no mask buffer and no host round trip. Gaps between slots are never read or written.
// Cost per parameter: read student and teacher, write teacher = 12 bytes and 3 FLOPs when the
// fragment is updated; a kept fragment is neither read nor written (0 bytes). Philox: one
// block (10 rounds) per fragment per thread for tensor / channel, one per 4 elements for
// element granularity (kernels/common/philox.h's philox_block, not a cuRAND state, which
// costs two); none at all when p = 0. Channel fragment ids: one 64-bit division per thread
// and chunk (ChunkRows below), then one 32-bit division per group of 4 elements.
// Tests: tests/teacher_test.cpp (invariants, statistics, canaries; CUDA vs CPU bit-identity),
// tests/cuda_review_test.cpp (ChunkRows against teacher_fragment).
#pragma once

#include <cstdint>

#include "kernels/common/arena_chunk.h"
#include "kernels/common/sts_rule.h"

namespace kernels {

// Channel fragment ids inside one chunk with 32-bit arithmetic: teacher_fragment divides the
// element's 64-bit offset in its slot by row_numel, a 64-bit division (a ~70-instruction
// subroutine call on a GPU) for every element. A chunk is at most a few thousand elements, so
// once its first element's row and column are known (one 64-bit division), every element's
// column offset from that row start fits in 32 bits while row_numel + chunk length does.
struct ChunkRows {
  uint64_t first_fragment = 0;  // fragment of the chunk's first element
  int64_t begin = 0;            // the chunk's first element (arena index)
  uint32_t first_col = 0;       // that element's column inside its row
  uint32_t row_numel = 1;

  // Whether the 32-bit path holds for this slot and a chunk of chunk_numel elements; when it
  // does not (rows of 2^31 elements and more), use teacher_fragment.
  TS_HD static bool fits(const TeacherSlot& s, int64_t chunk_numel) {
    return s.row_numel > 0 && s.row_numel + chunk_numel <= (int64_t{1} << 31);
  }
  ChunkRows() = default;
  TS_HD ChunkRows(const TeacherSlot& s, const ArenaChunk& c) : begin(c.begin) {
    const int64_t rel = c.begin - s.offset;
    const int64_t row = rel / s.row_numel;
    first_fragment = static_cast<uint64_t>(s.channel_fragment_base + row);
    first_col = static_cast<uint32_t>(rel - row * s.row_numel);
    row_numel = static_cast<uint32_t>(s.row_numel);
  }
  // Fragment of element i of the chunk (begin <= i < its end) and its column in the row.
  TS_HD uint64_t fragment(int64_t i, uint32_t* col) const {
    const uint32_t local = static_cast<uint32_t>(i - begin) + first_col;
    const uint32_t rows = local / row_numel;
    *col = local - rows * row_numel;
    return first_fragment + rows;
  }
};

// Tensor and channel granularity: the fragment of each of the 4 elements of the group that
// starts at g (elements past the chunk's end get ids too, unused), non-decreasing. Channel:
// the group's first fragment and column from ChunkRows (rows_fit: ChunkRows::fits) or else
// one 64-bit division, then each next element steps along the row. The CUDA kernel calls it
// per group; the loops have constant trip counts, so nvcc unrolls them and frag stays in
// registers (ptxas: no stack frame).
TS_HD void teacher_group_fragments(const TeacherSlot& s, const ChunkRows& rows, bool rows_fit, Granularity granularity,
                                   int64_t g, uint64_t frag[4]) {
  if (granularity == Granularity::Tensor) {
    for (int j = 0; j < 4; ++j) frag[j] = static_cast<uint64_t>(s.index);
    return;
  }
  uint64_t f;
  int64_t col;
  if (rows_fit) {
    uint32_t c32;
    f = rows.fragment(g, &c32);
    col = c32;
  } else {
    const int64_t rel = g - s.offset, row = rel / s.row_numel;
    f = static_cast<uint64_t>(s.channel_fragment_base + row);
    col = rel - row * s.row_numel;
  }
  for (int j = 0; j < 4; ++j) {
    frag[j] = f;
    if (++col == s.row_numel) {  // the next element starts the next row
      col = 0;
      ++f;
    }
  }
}

}  // namespace kernels

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
