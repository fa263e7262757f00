// Activation math shared by both backends.
#pragma once

#include "kernels/common/hd.h"

namespace kernels {

// relu is leaky_relu with slope 0. The derivative at exactly 0 is taken as 1, as PyTorch's
// leaky_relu does; gradient checks skip points that close to the kink.
TS_HD float leaky_relu(float x, float slope) { return x >= 0.0f ? x : slope * x; }
TS_HD float leaky_relu_grad(float x, float slope) { return x >= 0.0f ? 1.0f : slope; }

}  // namespace kernels
