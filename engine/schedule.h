// Learning-rate schedules as pure functions of the step, so a resumed run needs only the step.
#pragma once

#include <cstdint>

namespace tessera {

// Linear warm-up then cosine decay (solo-learn's BYOL recipe, per step):
//   k <  W:  lr = base * (k + 1) / W                      (the first step is not wasted at 0)
//   k >= W:  lr = final + (base - final) * (1 + cos(pi (k - W) / (K - W))) / 2
// k is clamped to [0, K]; W = 0 means no warm-up.
float warmup_cosine_lr(float base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps, float final_lr = 0.0f);

// FixMatch: lr = base * cos(7 pi k / (16 K)), from base to about 0.2 base at k = K.
float fixmatch_lr(float base_lr, int64_t step, int64_t total_steps);

}  // namespace tessera
