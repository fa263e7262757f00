// CPU reference of kernels/optimizer.h: chunks handed out by OpenMP, the per-element rules of
// kernels/common/optimizer_rules.h in plain loops; LARS's norms in the CUDA kernels' summation
// order (lars_chunk_sums, lars_slot_sums), so the two backends agree bit for bit.
#include <cmath>

#include "kernels/optimizer.h"

namespace kernels::cpu {

void optimizer_count_step(int64_t* steps, const int32_t* skip) {
  if (!(skip && *skip)) ++*steps;
}

void sgd_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
              float* buf, SgdParams p) {
  if (p.skip && *p.skip) return;
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
  for (int64_t k = 0; k < num_chunks; ++k)  // the CUDA block's summation order (optimizer_rules.h)
    lars_chunk_sums(w, g, chunks[k].begin, chunks[k].end, &partials[2 * k], &partials[2 * k + 1]);
}

void lars_trust_ratios(const OptimizerSlot* slots, int64_t num_slots, const float* partials, float* trust,
                       LarsParams p) {
  for (int64_t k = 0; k < num_slots; ++k) {
    const OptimizerSlot& s = slots[k];
    float ww = 0.0f, gg = 0.0f;
    lars_slot_sums(partials, s.first_chunk, s.num_chunks, &ww, &gg);  // the CUDA kernel's order
    float wd = 0.0f;
    trust[2 * k] = lars_trust(sqrtf(ww), sqrtf(gg), s.weight_decay, p.eta, p.eps, s.adapt != 0, p.clip_lr != 0, p.lr,
                              &wd);
    trust[2 * k + 1] = wd;
  }
}

void lars_step(const OptimizerSlot*, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
               float* buf, const float* trust, LarsParams p) {
  if (p.skip && *p.skip) return;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk c = chunks[k];
    const float ratio = trust[2 * c.slot], wd = trust[2 * c.slot + 1];
    for (int64_t i = c.begin; i < c.end; ++i) lars_element(w[i], buf[i], g[i], wd, ratio, p.lr, p.momentum, p.nesterov);
  }
}

void adamw_step(const OptimizerSlot* slots, const ArenaChunk* chunks, int64_t num_chunks, float* w, const float* g,
                float* m, float* v, AdamWParams p) {
  if (p.skip && *p.skip) return;
  float step_size, bc2_sqrt;
  adamw_bias_corrections(p.lr, p.beta1, p.beta2, *p.steps, &step_size, &bc2_sqrt);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const ArenaChunk c = chunks[k];
    const float decay = fmaf(-p.lr, slots[c.slot].weight_decay, 1.0f);  // 1 - lr * wd, fused on both backends
    for (int64_t i = c.begin; i < c.end; ++i)
      adamw_element(w[i], m[i], v[i], g[i], decay, p.beta1, p.beta2, p.eps, step_size, bc2_sqrt);
  }
}

}  // namespace kernels::cpu
