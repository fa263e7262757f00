// Frozen features of a backbone over a dataset split, for the evaluations of
// apps/run/evaluation.h: images only normalised (no augmentation), BatchNorm in eval mode
// (running statistics), no gradient, copied to the host batch by batch.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/run/evaluation.h"
#include "data/dataset.h"
#include "engine/workspace.h"
#include "models/model.h"

namespace tessera {

// The evaluations classify (kNN, the linear probe, FixMatch's test accuracy): a labeled train
// split of one class (a folder with one class sub-folder) would score 100% by construction. A
// UsageError naming `data_flag` and the class; an unlabeled split passes.
void require_two_classes(const data::Dataset& train, const std::string& data_flag);

// The first `limit` images of `d` (all when limit <= 0 or larger than d).
data::Dataset first_images(const data::Dataset& d, int64_t limit);

// backbone.features() of every image of `d`: (d.size, feature_dim) with d's labels. Runs in
// `ws`, reset per batch: between training steps the programs pass the step's own workspace, which
// then holds the larger of the two needs, not both, and allocates nothing once it has grown.
FeatureSet extract_features(Model& backbone, const data::Dataset& d, int64_t batch, Workspace& ws);

struct BackboneScores {
  double knn_top1 = 0, linear_top1 = 0;
};
// kNN and linear probe of one backbone: features of `train` (the bank and the probe's
// training set) and of `test` (reported).
BackboneScores evaluate_backbone(Model& backbone, const data::Dataset& train, const data::Dataset& test,
                                 int64_t batch, bool linear, const LinearProbeOptions& probe, Workspace& ws);

// What a self-supervised run (byol, moco) evaluates its backbones on: the kNN bank and the
// probe's train split (the first --eval-train-limit training images), the reported test split,
// images per forward and the probe's options.
struct BackboneEvaluation {
  data::Dataset train, test;
  int64_t batch = 256;
  LinearProbeOptions probe;
  // The kNN monitor between epochs (no probe), in the step's workspace.
  double knn_top1(Model& backbone, Workspace& ws) const {
    return evaluate_backbone(backbone, train, test, batch, /*linear=*/false, probe, ws).knn_top1;
  }
};

// The final evaluation of a self-supervised run (byol, moco): kNN and linear probe of the
// teacher and the student and, when `baseline`, of a backbone of the student's spec freshly
// initialised with `baseline_seed` (the student's starting point). `event` holds the scores
// under their metrics names (knn_top1_teacher, linear_top1_student, ..._baseline); `line` is
// the one-line summary, naming the networks as the program does ("teacher" / "key encoder").
// Every evaluation of the call runs in one workspace of its own.
struct FinalScores {
  nlohmann::json event;
  std::string line;
};
FinalScores final_scores(const std::string& program, Model& teacher, const std::string& teacher_name,
                         Model& student, const std::string& student_name, bool baseline, uint64_t baseline_seed,
                         const data::Dataset& train, const data::Dataset& test, int64_t batch,
                         const LinearProbeOptions& probe);

}  // namespace tessera
