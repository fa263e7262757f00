// Row-wise L2 normalisation math shared by both backends (l2_normalize, byol_loss).
//
// y = x / max(||x||, eps), as PyTorch's F.normalize. Where ||x|| > eps the Jacobian is
// (I - y y^T) / ||x||; where the clamp is active the denominator is the constant eps and
// the Jacobian is I / eps.
#pragma once

#include <cmath>

#include "kernels/common/hd.h"

namespace kernels {

// The denominator max(norm, eps).
TS_HD float l2_denominator(float norm, float eps) { return fmaxf(norm, eps); }

// d(loss)/dx_j of one element, given y_j, dy_j, the row's dot(y, dy) and its norm ||x||.
TS_HD float l2_normalize_grad(float y, float dy, float y_dot_dy, float norm, float eps) {
  return norm > eps ? (dy - y * y_dot_dy) / norm : dy / eps;
}

}  // namespace kernels
