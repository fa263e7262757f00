// CPU reference of kernels/optimizer.h: chunks handed out by OpenMP, the per-element rules of
// kernels/common/optimizer_rules.h in plain loops.
#include <cmath>

#include "kernels/optimizer.h"

namespace kernels::cpu {

void sgd_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
              float* buf, SgdParams p) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk c = chunks[k];
    const float wd = slots[c.slot].weight_decay;
    for (int64_t i = c.begin; i < c.end; ++i) sgd_element(w[i], buf[i], g[i], wd, p.lr, p.momentum, p.nesterov);
  }
}

void lars_norms(const OptimizerSlot*, const ArenaChunk* chunks, int64_t num_chunks, const float* w, const float* g,
                float* partials) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    float ww = 0.0f, gg = 0.0f;
    for (int64_t i = chunks[k].begin; i < chunks[k].end; ++i) {
      ww = fmaf(w[i], w[i], ww);
      gg = fmaf(g[i], g[i], gg);
    }
    partials[2 * k] = ww;
    partials[2 * k + 1] = gg;
  }
}

void lars_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
               float* buf, const float* partials, LarsParams p) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk c = chunks[k];
    const OptimizerSlot& s = slots[c.slot];
    float ww = 0.0f, gg = 0.0f;  // the slot's squared norms, summed in chunk order as on the GPU
    for (int32_t j = s.first_chunk; j < s.first_chunk + s.num_chunks; ++j) {
      ww += partials[2 * j];
      gg += partials[2 * j + 1];
    }
    float wd = 0.0f;
    const float trust = lars_trust(sqrtf(ww), sqrtf(gg), s.weight_decay, p.eta, p.eps, s.adapt != 0, &wd);
    for (int64_t i = c.begin; i < c.end; ++i) lars_element(w[i], buf[i], g[i], wd, trust, p.lr, p.momentum, p.nesterov);
  }
}

void adamw_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
                float* m, float* v, AdamWParams p) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk c = chunks[k];
    const float decay = fmaf(-p.lr, slots[c.slot].weight_decay, 1.0f);  // 1 - lr * wd, fused on both backends
    for (int64_t i = c.begin; i < c.end; ++i)
      adamw_element(w[i], m[i], v[i], g[i], decay, p.beta1, p.beta2, p.eps, p.step_size, p.bias_correction2_sqrt);
  }
}

}  // namespace kernels::cpu
