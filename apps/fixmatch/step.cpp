#include "apps/fixmatch/step.h"

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/distributed.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "kernels/fixmatch_targets.h"

namespace tessera::fixmatch {

namespace {

// Rows [begin, begin + rows) of a row-major (N, K) f32 tensor, as a view.
Tensor rows(const Tensor& t, int64_t begin, int64_t count) {
  const int64_t k = t.numel() / t.shape[0];
  return Tensor(t.f32() + begin * k, Shape{count, k}, DType::F32, t.device);
}

}  // namespace

void train_step(Nets& n, const Config& c, Graph& g, const data::Batch& batch, int64_t step, float lr, StepSlots slots,
                profile::PhaseSequence& phases) {
  const bool unlabeled = c.lambda_u > 0;
  // This rank's shard of the global batch (--batch-size is global; its split is checked).
  const int64_t ranks = n.ranks ? n.ranks->size() : 1;
  const int64_t B = c.batch_size / ranks, U = unlabeled ? B * c.mu : 0, N = B + 2 * U;
  const Device device = n.student->device();
  Workspace& ws = g.workspace();
  phases.enter("zero_grad");
  n.student->grads().zero();
  ws.reset();
  g.clear();

  // One forward over [labeled | weak | strong], as the reference does (shared BN statistics).
  phases.enter("student_forward");
  Tensor x_all = batch.views[0];
  if (unlabeled) {
    const Shape& image = batch.views[0].shape;  // (B, C, H, W)
    const int64_t image_numel = image[1] * image[2] * image[3];
    x_all = ws.alloc(Shape{N, image[1], image[2], image[3]});
    const int64_t counts[3] = {B, U, U};
    float* at = x_all.f32();
    for (int v = 0; v < 3; ++v) {
      copy(Tensor(at, batch.views[static_cast<size_t>(v)].shape, DType::F32, device), batch.views[static_cast<size_t>(v)]);
      at += counts[v] * image_numel;
    }
  }
  Var* logits = n.student->forward(g, g.input(x_all, "images"), true);

  Tensor pseudo, confidence;  // (U) each; undefined with --lambda-u 0
  if (unlabeled) {
    Tensor weak_logits = rows(logits->value, B, U);
    if (c.pseudo_labels == "teacher") {
      phases.enter("teacher_forward");
      // Train-mode BN over the weak batch, as the student sees it; the running statistics this
      // updates are replaced by the student's at the smoother's next update (--bn-buffers copy).
      NoGradScope no_grad(g);
      weak_logits = n.teacher->forward(g, g.input(batch.views[1], "weak"), true)->value;
    }
    phases.enter("loss");
    pseudo = ws.alloc(Shape{U}, DType::I32);
    confidence = ws.alloc(Shape{U});
    ops::argmax_max_prob(weak_logits, pseudo, confidence);
  }
  phases.enter("loss");
  // Per-row labels and weights, and this step's kept / correct counts into its slot.
  const Tensor labels = ws.alloc(Shape{N}, DType::I32), weight = ws.alloc(Shape{N}), w_sup = ws.alloc(Shape{N}),
               w_unsup = ws.alloc(Shape{N});
  const Tensor& y_labeled = batch.labels[0];
  TS_CHECK(y_labeled.numel() == B && (!unlabeled || batch.labels[1].numel() == U),
           "fixmatch: the batch's labels do not match the batch sizes");
  TS_DISPATCH(device, fixmatch_targets, y_labeled.i32(), unlabeled ? pseudo.i32() : nullptr,
              unlabeled ? confidence.f32() : nullptr, unlabeled ? batch.labels[1].i32() : nullptr, B, U,
              static_cast<float>(c.threshold), static_cast<float>(c.lambda_u), labels.i32(), weight.f32(),
              w_sup.f32(), w_unsup.f32(), slots.counts);
  Var* loss = ops::cross_entropy_weighted(g, logits, labels, weight);
  // The two terms for the log, from the same logits (no gradient), kept on the device.
  {
    NoGradScope no_grad(g);
    copy(Tensor(slots.losses, Shape{1}, DType::F32, device), ops::cross_entropy_weighted(g, logits, labels, w_sup)->value);
    if (unlabeled)
      copy(Tensor(slots.losses + 1, Shape{1}, DType::F32, device),
           ops::cross_entropy_weighted(g, logits, labels, w_unsup)->value);
  }
  phases.enter("backward");
  g.backward(loss);
  if (n.ranks && n.ranks->size() > 1) {
    // Data parallel: the weighted cross-entropy is a mean over this rank's shard (its weights
    // are n / b and n / u of the shard), so the ranks' mean gradient is the global batch's.
    // One all-reduce of the gradient arena; bucketed overlap with backward would go into
    // Graph::backward (see apps/byol/step.cpp).
    phases.enter("gradient_all_reduce");
    dist::all_reduce_mean_arena(*n.ranks, n.student->grads(), "the student's gradients");
  }
  if (n.nonfinite) n.nonfinite->check_step(step, loss->value);  // after the all-reduce: every rank judges the same gradients
  phases.enter("optimizer");
  n.opt->step(n.student->params(), n.student->grads(), lr);
  phases.enter("teacher_update");
  n.smoother->update(n.student->params(), n.teacher->params(), n.student->buffers(), n.teacher->buffers(), step);
  phases.leave();
}

}  // namespace tessera::fixmatch
