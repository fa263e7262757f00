// Activation math shared by both backends.
#pragma once

#include "kernels/common/hd.h"

namespace kernels {

// relu is leaky_relu with slope 0. The derivative is read from the output y, so the backward
// does not need the input (an in-place relu overwrites it): for slope >= 0, y > 0 exactly when
// x > 0. At exactly 0 it is slope (0 for relu), as PyTorch's relu (threshold_backward on the
// result) and leaky_relu (self > 0) take it; gradient checks skip points that close to the kink.
TS_HD float leaky_relu(float x, float slope) { return x >= 0.0f ? x : slope * x; }
TS_HD float leaky_relu_grad(float y, float slope) { return y > 0.0f ? 1.0f : slope; }

}  // namespace kernels
