// FixMatch's per-row targets, built on the device so a training step needs no host round trip.
// The concatenated batch is [labeled (b) | unlabeled weak (u) | unlabeled strong (u)], n = b + 2u
// rows. From the weak rows' pseudo-labels and confidences (ops::argmax_max_prob) this writes
// what one weighted cross-entropy over all n rows needs (apps/fixmatch/step.cpp):
//
//   row            label               sup_weight   unsup_weight          weight
//   labeled i      labeled_labels[i]   n / b        0                     n / b
//   weak i         0                   0            0                     0
//   strong i       pseudo[i]           0            n / u if kept else 0  lambda_u * unsup_weight
//
// kept = confidence[i] >= threshold (a confidence exactly at the threshold is kept), and adds
// to counts[0] the number of kept rows and to counts[1] the number of pseudo-labels equal to
// the unlabeled images' true labels (all u rows, kept or not). weight = sup_weight + lambda_u
// unsup_weight in float, the same arithmetic the host did before, so the CPU run is bit for
// bit what it was. The weak rows keep label 0 and weight 0: they carry no loss or gradient.
// With u = 0 (--lambda-u 0) only the labeled rows exist; pseudo, confidence and
// unlabeled_labels may then be null and counts is left as it is.
//
// Cost: reads 4 b + 12 u bytes, writes 16 n bytes and 8 of counts; no FLOPs worth counting
// (a compare and a multiply a row). Rows are independent; the counts are integer sums, so
// the CUDA twin's atomics give the same answer in any order.
// Tests: tests/fixmatch_targets_test.cpp (plain reference, threshold ties, lambda_u 0, all and
// none kept, u = 0; CUDA vs CPU where a GPU exists).
#pragma once

#include <cstdint>

#include "kernels/common/cost.h"
#include "kernels/common/hd.h"

#define TS_FIXMATCH_TARGETS_KERNELS                                                                  \
  /* labeled_labels (b); pseudo, confidence, unlabeled_labels (u) or null when u = 0;             */ \
  /* labels, weight, sup_weight, unsup_weight (b + 2u); counts (2): += kept, correct pseudo-labels */ \
  void fixmatch_targets(const int32_t* labeled_labels, const int32_t* pseudo, const float* confidence,  \
                        const int32_t* unlabeled_labels, int64_t b, int64_t u, float threshold,       \
                        float lambda_u, int32_t* labels, float* weight, float* sup_weight,             \
                        float* unsup_weight, int32_t* counts);

namespace kernels::cpu {
TS_FIXMATCH_TARGETS_KERNELS
}
namespace kernels::cuda {
TS_FIXMATCH_TARGETS_KERNELS
}
#undef TS_FIXMATCH_TARGETS_KERNELS

namespace kernels {

// One row of the table above, shared by both backends: writes labels[row], weight[row],
// sup_weight[row] and unsup_weight[row], and returns the row's contribution to the counts.
// `row` is in [0, b + 2u).
struct FixMatchRowCounts {
  int32_t kept, correct;  // 0 or 1; strong rows only
};

TS_HD FixMatchRowCounts fixmatch_row(int64_t row, const int32_t* labeled_labels, const int32_t* pseudo,
                                     const float* confidence, const int32_t* unlabeled_labels, int64_t b,
                                     int64_t u, float threshold, float lambda_u, int32_t* labels, float* weight,
                                     float* sup_weight, float* unsup_weight) {
  const int64_t n = b + 2 * u;
  FixMatchRowCounts c{0, 0};
  int32_t label = 0;
  float sup = 0.0f, unsup = 0.0f;
  if (row < b) {
    label = labeled_labels[row];
    sup = static_cast<float>(n) / static_cast<float>(b);
  } else if (row >= b + u) {
    const int64_t i = row - b - u;
    label = pseudo[i];
    c.kept = confidence[i] >= threshold;
    c.correct = pseudo[i] == unlabeled_labels[i];
    unsup = c.kept ? static_cast<float>(n) / static_cast<float>(u) : 0.0f;
  }
  labels[row] = label;
  sup_weight[row] = sup;
  unsup_weight[row] = unsup;
  weight[row] = sup + lambda_u * unsup;
  return c;
}

TS_KERNEL_COST(fixmatch_targets, const int32_t*, const int32_t*, const float*, const int32_t*, int64_t b,
               int64_t u, float, float, int32_t*, float*, float*, float*, int32_t*) {
  return {4.0 * b + 12.0 * u + 16.0 * (b + 2 * u) + 8.0, 1.0 * (b + 2 * u)};
}

}  // namespace kernels
