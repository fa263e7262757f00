#include "apps/run/features.h"

#include <cstdio>

#include "apps/run/run_directory.h"

#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/workspace.h"

namespace tessera {

void require_two_classes(const data::Dataset& train, const std::string& data_flag) {
  if (!train.labeled() || train.num_classes >= 2) return;
  const std::string name = train.class_names.empty() ? "" : cat(" ('", train.class_names.front(), "')");
  throw UsageError(cat("--data ", data_flag, ": expected at least 2 classes in ", train.name, ", found ",
                       train.num_classes, name, ": the evaluation classifies (put each class in a sub-folder of its own)"));
}

data::Dataset first_images(const data::Dataset& d, int64_t limit) {
  data::Dataset out;
  out.name = d.name;
  out.size = limit > 0 && limit < d.size ? limit : d.size;
  out.channels = d.channels;
  out.height = d.height;
  out.width = d.width;
  out.num_classes = d.num_classes;
  out.images.assign(d.images.begin(), d.images.begin() + out.size * d.image_bytes());
  if (d.labeled()) out.labels.assign(d.labels.begin(), d.labels.begin() + out.size);
  out.mean = d.mean;
  out.std = d.std;
  out.class_names = d.class_names;
  return out;
}

FeatureSet extract_features(Model& backbone, const data::Dataset& d, int64_t batch, Workspace& ws) {
  TS_CHECK(d.labeled(), "features of ", d.name, ": evaluation needs labels");
  FeatureSet f;
  f.n = d.size;
  f.dim = backbone.feature_dim();
  f.x.resize(static_cast<size_t>(f.n * f.dim));
  f.y = d.labels;
  data::NormalizeTransform normalize;
  data::for_each_batch(d, batch, normalize, backbone.device(), [&](const Tensor& images, const Tensor&, int64_t first) {
    ws.reset();
    Graph g(ws);
    NoGradScope no_grad(g);
    Var* feats = backbone.features(g, g.input(images, "images"), /*train=*/false);
    TS_CHECK(feats->value.numel() == images.shape[0] * f.dim, "features of ", d.name, ": expected ",
             images.shape[0], " x ", f.dim, ", found ", feats->value.shape.str());
    copy_to_host(f.x.data() + first * f.dim, feats->value, feats->value.bytes());
  });
  return f;
}

BackboneScores evaluate_backbone(Model& backbone, const data::Dataset& train, const data::Dataset& test,
                                 int64_t batch, bool linear, const LinearProbeOptions& probe, Workspace& ws) {
  const FeatureSet train_f = extract_features(backbone, train, batch, ws);
  const FeatureSet test_f = extract_features(backbone, test, batch, ws);
  BackboneScores s;
  s.knn_top1 = knn_top1(train_f, test_f, train.num_classes);
  if (linear) s.linear_top1 = linear_probe(train_f, test_f, train.num_classes, probe).test_top1;
  return s;
}

FinalScores final_scores(const std::string& program, Model& teacher, const std::string& teacher_name,
                         Model& student, const std::string& student_name, bool baseline, uint64_t baseline_seed,
                         const data::Dataset& train, const data::Dataset& test, int64_t batch,
                         const LinearProbeOptions& probe) {
  std::fprintf(stderr, "%s: evaluating on %ld train / %ld test images\n", program.c_str(),
               static_cast<long>(train.size), static_cast<long>(test.size));
  Workspace ws(student.device());
  const BackboneScores t = evaluate_backbone(teacher, train, test, batch, true, probe, ws);
  const BackboneScores s = evaluate_backbone(student, train, test, batch, true, probe, ws);
  FinalScores out;
  out.event = {{"knn_top1_teacher", t.knn_top1},
               {"linear_top1_teacher", t.linear_top1},
               {"knn_top1_student", s.knn_top1},
               {"linear_top1_student", s.linear_top1}};
  out.line = cat(program, ": linear probe top-1: ", teacher_name, " ", fixed2(t.linear_top1), "% (kNN ",
                 fixed2(t.knn_top1), "%), ", student_name, " ", fixed2(s.linear_top1), "%");
  if (baseline) {
    auto random_init = make_model(student.spec(), student.device());
    random_init->init(baseline_seed);
    const BackboneScores b = evaluate_backbone(*random_init, train, test, batch, true, probe, ws);
    out.event["knn_top1_baseline"] = b.knn_top1;
    out.event["linear_top1_baseline"] = b.linear_top1;
    const double gain = t.linear_top1 - b.linear_top1;
    out.line += cat("; random-init baseline ", fixed2(b.linear_top1), "% (", gain >= 0 ? "+" : "", fixed2(gain),
                    " points)");
  }
  return out;
}

}  // namespace tessera
