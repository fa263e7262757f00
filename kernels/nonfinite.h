// The training step's non-finite check: does a tensor hold a NaN or an infinity, and if so,
// which one was it? A small record in device memory collects the answer, so the step never
// waits for the device; the host reads the record only at log lines and checkpoints
// (apps/run/nonfinite.h). The optimizer, the FixMatch teacher update and MoCo's enqueue read
// `skip` on the device and do nothing for a step that had a non-finite value
// (--on-nonfinite skip).
//
// Tensor ids are the caller's: 0 the loss, then one per slot of every watched gradient arena.
// Within a step the lowest id found wins (atomicMin / an OpenMP min), so the name does not
// depend on thread scheduling.
//   nonfinite_check        n elements: reads 4 n bytes, 1 compare each; writes the record
//                          only when it finds one.
//   nonfinite_check_arena  the same over an arena's chunks (kernels/common/arena_chunk.h):
//                          4 bytes per parameter, gaps never read; the id is first + slot.
//   nonfinite_check_op     as nonfinite_check, for --nonfinite-check ops: every op's output and
//                          every gradient a backward node wrote, under the op's sequence
//                          number (engine/nonfinite.h), into step_op.
//   nonfinite_commit       one thread: folds the step's finding into the record (about 50 bytes).
// A gradient arena is checked for 4 bytes per parameter against the optimizer's 20 (SGD).
// Tests: tests/nonfinite_test.cpp (CPU reference on NaN / +inf / -inf / large finite values,
// lowest id wins, commit; CUDA vs CPU where a GPU exists).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common/arena_chunk.h"
#include "kernels/common/cost.h"
#include "kernels/common/hd.h"

namespace kernels {

// Steps the record remembers by number (the last ones that had a non-finite value): the host
// reads them at every metrics line and checkpoint, so it misses none unless more than this
// many steps go bad between two reads.
constexpr int kNonfiniteRing = 256;

// What the device knows about non-finite values so far. Zero-initialised is not valid: start
// from nonfinite_record_init().
struct NonfiniteRecord {
  int32_t step_tensor;   // lowest id found non-finite since the last commit; kNonfiniteNone: none
  int32_t skip;          // 1 when the last committed step had one: its updates are dropped
  int32_t first_tensor;  // id found at the first such step; -1 until there is one
  int32_t bad_steps;     // committed steps that had one (in skip mode: the skipped steps)
  int64_t first_step;    // the first such step; -1 until there is one
  // --nonfinite-check ops: the lowest sequence number (execution order within the step) of an
  // op whose output was found non-finite since the last commit, and that of the first bad step.
  int32_t step_op;       // kNonfiniteNone: none
  int32_t first_op;      // -1: none (or not checked)
  // Bad step number b (0-based, b < bad_steps) is bad_step_ring[b % kNonfiniteRing].
  int64_t bad_step_ring[kNonfiniteRing];
};
constexpr int32_t kNonfiniteNone = 0x7fffffff;

inline NonfiniteRecord nonfinite_record_init() {
  NonfiniteRecord r{};
  r.step_tensor = kNonfiniteNone;
  r.first_tensor = -1;
  r.first_step = -1;
  r.step_op = kNonfiniteNone;
  r.first_op = -1;
  return r;
}

// The commit's rule, one thread on either backend (nonfinite_commit).
TS_HD void nonfinite_commit_rule(NonfiniteRecord* rec, int64_t step) {
  rec->skip = rec->step_tensor != kNonfiniteNone ? 1 : 0;
  if (rec->skip) {
    rec->bad_step_ring[rec->bad_steps % kNonfiniteRing] = step;
    ++rec->bad_steps;
    if (rec->first_step < 0) {
      rec->first_step = step;
      rec->first_tensor = rec->step_tensor;
      rec->first_op = rec->step_op == kNonfiniteNone ? -1 : rec->step_op;
    }
  }
  rec->step_tensor = kNonfiniteNone;
  rec->step_op = kNonfiniteNone;
}

// NaN or +-inf: the exponent bits all set. A bit test rather than std::isfinite, so the
// answer does not depend on fast-math flags, and both backends share it.
TS_HD bool is_nonfinite(float v) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(v);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
#endif
  return (bits & 0x7f800000u) == 0x7f800000u;
}

}  // namespace kernels

#define TS_NONFINITE_KERNELS                                                                   \
  /* x (n): any non-finite element sets rec->step_tensor = min(rec->step_tensor, tensor). */  \
  void nonfinite_check(const float* x, int64_t n, int32_t tensor, NonfiniteRecord* rec);       \
  /* x (arena_numel), chunks (num_chunks) on this backend's device: a non-finite element in */ \
  /* a chunk of slot s sets rec->step_tensor = min(rec->step_tensor, first_tensor + s). */    \
  void nonfinite_check_arena(const ArenaChunk* chunks, int64_t num_chunks, const float* x,     \
                             int32_t first_tensor, NonfiniteRecord* rec);                      \
  /* x (n): any non-finite element sets rec->step_op = min(rec->step_op, op) (ops mode). */   \
  void nonfinite_check_op(const float* x, int64_t n, int32_t op, NonfiniteRecord* rec);        \
  /* nonfinite_commit_rule: skip = (step_tensor != none); when set, the step joins the ring, */ \
  /* bad_steps += 1 and, the first time, first_step / first_tensor / first_op are set. */     \
  void nonfinite_commit(NonfiniteRecord* rec, int64_t step);

namespace kernels::cpu {
TS_NONFINITE_KERNELS
}
namespace kernels::cuda {
TS_NONFINITE_KERNELS
}
#undef TS_NONFINITE_KERNELS

namespace kernels {
TS_KERNEL_COST(nonfinite_check, const float*, int64_t n, int32_t, NonfiniteRecord*) { return {4.0 * n, 1.0 * n}; }
TS_KERNEL_COST(nonfinite_check_op, const float*, int64_t n, int32_t, NonfiniteRecord*) { return {4.0 * n, 1.0 * n}; }
TS_KERNEL_COST(nonfinite_commit, NonfiniteRecord*, int64_t) { return {56.0, 0.0}; }
}  // namespace kernels
