// CPU reference of kernels/fixmatch_targets.h: one pass over the b + 2u rows, the counts summed
// in the same loop. Serial: a few hundred rows, less work than starting an OpenMP team.
#include "kernels/fixmatch_targets.h"

namespace kernels::cpu {

void fixmatch_targets(const int32_t* labeled_labels, const int32_t* pseudo, const float* confidence,
                      const int32_t* unlabeled_labels, int64_t b, int64_t u, float threshold, float lambda_u,
                      int32_t* labels, float* weight, float* sup_weight, float* unsup_weight, int32_t* counts) {
  int32_t kept = 0, correct = 0;
  for (int64_t row = 0; row < b + 2 * u; ++row) {
    const FixMatchRowCounts c = fixmatch_row(row, labeled_labels, pseudo, confidence, unlabeled_labels, b, u,
                                             threshold, lambda_u, labels, weight, sup_weight, unsup_weight);
    kept += c.kept;
    correct += c.correct;
  }
  counts[0] += kept;
  counts[1] += correct;
}

}  // namespace kernels::cpu
