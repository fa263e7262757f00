// Softmax cross-entropy math shared by both backends (kernels/loss.h).
//
// Stability: logits are shifted by the row maximum before exp, so exp never overflows and
// the largest term is exactly 1 (the sum is >= 1 and its log is finite). The forward keeps
// lse = log sum_j exp(x_j) per row; the backward reads softmax_j = exp(x_j - lse) from it.
#pragma once

#include <cmath>

#include "kernels/common/hd.h"

namespace kernels {

// log sum exp of a row, given its maximum m and sum_j exp(x_j - m).
TS_HD float logsumexp(float m, float sum_exp_shifted) { return m + logf(sum_exp_shifted); }

TS_HD float softmax_prob(float x, float lse) { return expf(x - lse); }

// d CE / d x_j for a row with target mass t_j and total target mass t_sum
// (hard label: t_j = [j == label], t_sum = 1), CE = sum_j t_j (lse - x_j).
TS_HD float cross_entropy_grad(float x, float lse, float t, float t_sum) {
  return t_sum * softmax_prob(x, lse) - t;
}

}  // namespace kernels
