#include "apps/byol/step.h"

#include "engine/distributed.h"
#include "engine/ops.h"
#include "engine/workspace.h"

namespace tessera::byol {

Var* train_step(Nets& n, Graph& g, const data::Batch& batch, int64_t step, float lr, profile::PhaseSequence& phases) {
  // The teacher first, from the student the previous optimizer step left (the official order).
  phases.enter("teacher_update");
  n.smooth_backbone->update(n.backbone->params(), n.t_backbone->params(), n.backbone->buffers(),
                            n.t_backbone->buffers(), step);
  n.smooth_projector->update(n.projector->params(), n.t_projector->params(), n.projector->buffers(),
                             n.t_projector->buffers(), step);
  phases.enter("zero_grad");
  n.backbone->grads().zero();
  n.projector->grads().zero();
  n.predictor->grads().zero();
  g.workspace().reset();
  g.clear();
  Var* q[2];
  Var* z[2];
  for (int v = 0; v < 2; ++v) {
    phases.enter("student_forward");
    Var* x = g.input(batch.views[static_cast<size_t>(v)], v == 0 ? "view1" : "view2");
    q[v] = n.predictor->features(g, n.projector->features(g, n.backbone->features(g, x, true), true), true);
    phases.enter("teacher_forward");
    NoGradScope no_grad(g);
    z[v] = n.t_projector->features(g, n.t_backbone->features(g, x, true), true);
  }
  phases.enter("loss");
  Var* loss = ops::add(g, ops::byol_loss(g, q[0], z[1]), ops::byol_loss(g, q[1], z[0]));
  phases.enter("backward");
  g.backward(loss);
  if (n.ranks && n.ranks->size() > 1) {
    // Data parallel: each rank's loss is the mean over its shard, so the mean of the ranks'
    // gradients is the gradient of the global batch. One all-reduce per arena, issued once
    // backward is done. Bucketed overlap would start each arena's (or each bucket's)
    // all-reduce from Graph::backward as soon as its last gradient is final (the predictor's
    // first, the backbone's last), on a stream / request of its own, and wait here.
    phases.enter("gradient_all_reduce");
    dist::all_reduce_mean_arena(*n.ranks, n.predictor->grads(), "the predictor's gradients");
    dist::all_reduce_mean_arena(*n.ranks, n.projector->grads(), "the projector's gradients");
    dist::all_reduce_mean_arena(*n.ranks, n.backbone->grads(), "the backbone's gradients");
  }
  if (n.nonfinite) n.nonfinite->check_step(step, loss->value);  // after the all-reduce: every rank judges the same gradients
  phases.enter("optimizer");
  n.opt_backbone->step(n.backbone->params(), n.backbone->grads(), lr);
  n.opt_projector->step(n.projector->params(), n.projector->grads(), lr);
  n.opt_predictor->step(n.predictor->params(), n.predictor->grads(), lr);
  phases.leave();
  return loss;
}

}  // namespace tessera::byol
