#include "engine/schedule.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"

namespace tessera {

float warmup_cosine_lr(float base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps, float final_lr) {
  TS_CHECK(total_steps > 0 && warmup_steps >= 0 && warmup_steps < total_steps,
           "warm-up + cosine schedule: expected 0 <= warmup < total steps, found warmup ", warmup_steps, ", total ",
           total_steps);
  const int64_t k = std::clamp<int64_t>(step, 0, total_steps);
  if (k < warmup_steps) return static_cast<float>(base_lr * static_cast<double>(k + 1) / static_cast<double>(warmup_steps));
  const double t = static_cast<double>(k - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return static_cast<float>(final_lr + (base_lr - final_lr) * (1.0 + std::cos(M_PI * t)) / 2.0);
}

float fixmatch_lr(float base_lr, int64_t step, int64_t total_steps) {
  TS_CHECK(total_steps > 0, "FixMatch schedule: expected total steps > 0, found ", total_steps);
  const double k = static_cast<double>(std::clamp<int64_t>(step, 0, total_steps));
  return static_cast<float>(base_lr * std::cos(7.0 * M_PI * k / (16.0 * static_cast<double>(total_steps))));
}

}  // namespace tessera
