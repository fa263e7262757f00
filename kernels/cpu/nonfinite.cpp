// CPU reference of kernels/nonfinite.h: a min-reduction of the ids of non-finite elements.
#include <algorithm>

#include "kernels/nonfinite.h"

namespace kernels::cpu {

void nonfinite_check(const float* x, int64_t n, int32_t tensor, NonfiniteRecord* rec) {
  int found = 0;
#pragma omp parallel for simd schedule(static) reduction(| : found)
  for (int64_t i = 0; i < n; ++i) found |= is_nonfinite(x[i]) ? 1 : 0;
  if (found) rec->step_tensor = std::min(rec->step_tensor, tensor);
}

void nonfinite_check_arena(const ArenaChunk* chunks, int64_t num_chunks, const float* x, int32_t first_tensor,
                           NonfiniteRecord* rec) {
  int32_t lowest = kNonfiniteNone;
#pragma omp parallel for schedule(dynamic, 4) reduction(min : lowest)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk& c = chunks[k];
    bool found = false;
    for (int64_t i = c.begin; i < c.end; ++i) found |= is_nonfinite(x[i]);
    if (found) lowest = std::min(lowest, first_tensor + c.slot);
  }
  rec->step_tensor = std::min(rec->step_tensor, lowest);
}

void nonfinite_check_op(const float* x, int64_t n, int32_t op, NonfiniteRecord* rec) {
  int found = 0;
#pragma omp parallel for simd schedule(static) reduction(| : found)
  for (int64_t i = 0; i < n; ++i) found |= is_nonfinite(x[i]) ? 1 : 0;
  if (found) rec->step_op = std::min(rec->step_op, op);
}

void nonfinite_commit(NonfiniteRecord* rec, int64_t step) { nonfinite_commit_rule(rec, step); }

}  // namespace kernels::cpu
