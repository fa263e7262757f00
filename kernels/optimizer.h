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
// (28 bytes, ~12 FLOPs and a sqrt and a division). optimizer_count_step: 12 bytes, one thread.
// Tests: tests/optimizer_test.cpp (per-tensor reference, exclusions, PyTorch numbers;
// CUDA vs CPU where a GPU exists), tests/cuda_review_test.cpp (trust ratios per slot against a
// float64 reference; CUDA trust ratios bit-equal to the CPU's from the same partials).
#pragma once

#include <cstdint>

#include <cmath>

#include "kernels/common/arena_chunk.h"
#include "kernels/common/hd.h"
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
  int32_t clip_lr = 0;            // trust = min(trust / lr, 1) (kernels/common/optimizer_rules.h)
};
struct AdamWParams {
  float lr, beta1, beta2, eps;
  // Device counter of the steps taken, this one included (optimizer_count_step runs first): t
  // of the bias corrections. On the device because a skipped step must not count, and only
  // the device knows which steps were skipped.
  const int64_t* steps;
  const int32_t* skip = nullptr;  // as SgdParams::skip
};

// AdamW's bias corrections for step t >= 1, in double as PyTorch computes them in Python:
// step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t). beta^t by
// repeated squaring, multiplications only (rounded one by one on the device too: no fused
// multiply-add), so both backends get the same bits; the device's pow() is not correctly
// rounded. Within a few ulp of std::pow in double, the same float almost always.
TS_HD double adamw_power(double beta, int64_t t) {
  double result = 1.0, base = beta;
  for (; t > 0; t >>= 1) {
#if defined(__CUDA_ARCH__)
    if (t & 1) result = __dmul_rn(result, base);
    base = __dmul_rn(base, base);
#else
    if (t & 1) result *= base;
    base *= base;
#endif
  }
  return result;
}
TS_HD void adamw_bias_corrections(float lr, float beta1, float beta2, int64_t t, float* step_size,
                                         float* bias_correction2_sqrt) {
  const double bc1 = 1.0 - adamw_power(static_cast<double>(beta1), t);
  const double bc2 = 1.0 - adamw_power(static_cast<double>(beta2), t);
  *step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  *bias_correction2_sqrt = static_cast<float>(sqrt(bc2));
}

}  // namespace kernels

#define TS_OPTIMIZER_KERNELS                                                                     \
  /* Chunk size of the optimizer launches (one CUDA block of 256 threads, 16 elements each). */  \
  constexpr int64_t kOptimizerChunk = 4096;                                                      \
  /* One thread, before every step: *steps += 1 unless *skip (null: never skip). */              \
  void optimizer_count_step(int64_t* steps, const int32_t* skip);                                \
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
