// Fused optimizer steps over a whole parameter arena: one launch per step (three for LARS:
// per-chunk partial norms, one small deterministic pass turning each slot's partials into its
// trust ratio, then the update). The per-element rules are in
// kernels/common/optimizer_rules.h; per-tensor settings (weight decay after exclusions, LARS
// adaptation) come from an OptimizerSlot table uploaded once.
// Work: chunks as in kernels/common/arena_chunk.h, one CUDA block per chunk, so every thread
// knows its slot's settings without a search; gaps are never touched.
// Cost per parameter: SGD / LARS read w, g, buf and write w, buf (20 bytes, ~6 FLOPs; LARS
// reads w and g once more for the norms: +8 bytes, and 8 bytes per chunk and per slot for the
// trust ratios); AdamW reads w, g, m, v and writes w, m, v
// (28 bytes, ~12 FLOPs and a sqrt and a division).
// Tests: tests/optimizer_test.cpp (per-tensor reference, exclusions, PyTorch numbers;
// CUDA vs CPU where a GPU exists), tests/cuda_review_test.cpp (trust ratios per slot against a
// float64 reference; CUDA trust ratios bit-equal to the CPU's from the same partials).
#pragma once

#include <cstdint>

#include "kernels/common/arena_chunk.h"
#include "kernels/common/optimizer_rules.h"

namespace kernels {

struct SgdParams {
  float lr, momentum;
  int32_t nesterov;
  // Device flag (kernels/nonfinite.h's NonfiniteRecord::skip): when it points to a non-zero
  // value the step does nothing. Null: always apply.
  const int32_t* skip = nullptr;
};
struct LarsParams {
  float lr, momentum, eta, eps;
  int32_t nesterov;
  const int32_t* skip = nullptr;  // as SgdParams::skip (lars_step; the norms and ratios are only read by it)
};
struct AdamWParams {
  float lr, beta1, beta2, eps;
  float step_size;              // lr / (1 - beta1^t), computed in double on the host as PyTorch does
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t), likewise
  const int32_t* skip = nullptr;  // as SgdParams::skip
};

}  // namespace kernels

#define TS_OPTIMIZER_KERNELS                                                                     \
  /* Chunk size of the optimizer launches (one CUDA block of 256 threads, 16 elements each). */  \
  constexpr int64_t kOptimizerChunk = 4096;                                                      \
  /* slots, chunks: tables on this backend's device. w, g, buf (arena_numel). */                 \
  void sgd_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, \
                const float* g, float* buf, SgdParams p);                                        \
  /* partials (num_chunks, 2): per chunk, sum of w^2 and sum of g^2 over the chunk. */           \
  void lars_norms(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks,      \
                  const float* w, const float* g, float* partials);                              \
  /* trust (num_slots, 2): per slot, its trust ratio and the weight decay that applies        \
     (lars_trust of the slot's norms, summed from its partials as lars_slot_sums does). */      \
  void lars_trust_ratios(const OptimizerSlot* slots, int64_t num_slots, const float* partials,   \
                         float* trust, LarsParams p);                                            \
  /* lars_element on every element with its slot's trust (num_slots, 2). */                      \
  void lars_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, \
                 const float* g, float* buf, const float* trust, LarsParams p);                  \
  /* m, v (arena_numel): first and second moments. */                                            \
  void adamw_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, \
                  const float* g, float* m, float* v, AdamWParams p);

namespace kernels::cpu {
TS_OPTIMIZER_KERNELS
}
namespace kernels::cuda {
TS_OPTIMIZER_KERNELS
}
#undef TS_OPTIMIZER_KERNELS
