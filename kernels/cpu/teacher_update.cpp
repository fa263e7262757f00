// CPU reference of kernels/teacher_update.h. It walks each chunk fragment by fragment: one
// draw per fragment, then either nothing (kept) or the blend over the fragment's contiguous
// elements, which the compiler vectorises. Element granularity draws four fragments per
// Philox block (philox_block), as the CUDA twin does.
#include <algorithm>

#include "kernels/common/philox.h"
#include "kernels/teacher_update.h"

namespace kernels::cpu {

namespace {

void blend_range(const float* student, float* teacher, int64_t begin, int64_t end, float momentum) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) teacher[i] = sts_blend(teacher[i], student[i], momentum);
}

void update_chunk_by_fragment(const TeacherSlot& s, const ArenaChunk& c, const float* student,
                              float* teacher, const TeacherRule& rule) {
  for (int64_t i = c.begin; i < c.end;) {
    const int64_t end = std::min(c.end, teacher_fragment_end(s, rule.granularity, i));
    const uint64_t fragment = teacher_fragment(s, rule.granularity, i);
    const float u = philox_uniform(rule.seed, kStreamTeacher, rule.step, fragment);
    if (!sts_keep(u, rule.preserve_prob)) blend_range(student, teacher, i, end, rule.momentum);
    i = end;
  }
}

// Element granularity: fragment id = arena index, and chunks start on multiples of 4, so the
// four words of Philox block g / 4 are the draws of elements g .. g + 3.
void update_chunk_by_element(const ArenaChunk& c, const float* student, float* teacher,
                             const TeacherRule& rule) {
  const uint64_t subsequence = philox_subsequence(kStreamTeacher, rule.step);
  for (int64_t g = c.begin; g < c.end; g += 4) {
    const Philox4 w = philox_block(rule.seed, subsequence, static_cast<uint64_t>(g) >> 2);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
    const int64_t n = std::min<int64_t>(4, c.end - g);
    for (int64_t j = 0; j < n; ++j)
      teacher[g + j] = sts_rule(teacher[g + j], student[g + j], philox_to_uniform(words[j]),
                                rule.preserve_prob, rule.momentum);
  }
}

}  // namespace

void teacher_update(const TeacherSlot* slots, const ArenaChunk* chunks, int64_t num_chunks,
                    const float* student, float* teacher, TeacherRule rule) {
  if (rule.skip && *rule.skip) return;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk& c = chunks[k];
    if (rule.preserve_prob <= 0.0f)  // every fragment is updated: no draws needed
      blend_range(student, teacher, c.begin, c.end, rule.momentum);
    else if (rule.granularity == Granularity::Element)
      update_chunk_by_element(c, student, teacher, rule);
    else
      update_chunk_by_fragment(slots[c.slot], c, student, teacher, rule);
  }
}

}  // namespace kernels::cpu
