#include "apps/moco/step.h"

#include "engine/check.h"
#include "engine/ops.h"
#include "engine/workspace.h"

namespace tessera::moco {

namespace {

// Rows [begin, begin + rows) of a contiguous tensor whose first dimension is the batch: a view.
Tensor rows_of(const Tensor& t, int64_t begin, int64_t rows) {
  Shape s = t.shape;
  const int64_t row_elems = t.numel() / s[0];
  s.dims[0] = rows;
  return Tensor(static_cast<char*>(t.ptr) + static_cast<size_t>(begin * row_elems) * dtype_size(t.dtype), s, t.dtype,
                t.device);
}

}  // namespace

StepResult train_step(Nets& n, Graph& g, const data::Batch& batch, int64_t step, float lr, float temperature,
                      int64_t bn_splits, profile::PhaseSequence& phases) {
  // The key encoder first, from the query encoder the previous optimizer step left (MoCo's
  // order: _momentum_update_key_encoder before the keys are computed).
  phases.enter("teacher_update");
  n.smooth_backbone->update(n.backbone->params(), n.k_backbone->params(), n.backbone->buffers(),
                            n.k_backbone->buffers(), step);
  n.smooth_head->update(n.head->params(), n.k_head->params(), n.head->buffers(), n.k_head->buffers(), step);
  phases.enter("zero_grad");
  n.backbone->grads().zero();
  n.head->grads().zero();
  g.workspace().reset();
  g.clear();

  phases.enter("student_forward");
  const Tensor& view_q = batch.views[0];
  const Tensor& view_k = batch.views[1];
  Var* q = ops::l2_normalize(g, n.head->features(g, n.backbone->features(g, g.input(view_q, "view1"), true), true));

  // Split BN: each sub-batch of keys is normalised with its own statistics (and moves the key
  // encoder's running statistics once), so a key's BN statistics are not the ones its query
  // saw over the whole batch - the single-device stand-in for shuffle BN (docs/moco.md).
  phases.enter("teacher_forward");
  const int64_t batch_size = view_k.shape[0], dim = q->value.shape[1];
  TS_CHECK(bn_splits >= 1 && batch_size % bn_splits == 0, "moco: batch of ", batch_size,
           " is not a multiple of --bn-splits ", bn_splits);
  const int64_t sub = batch_size / bn_splits;
  Tensor keys = g.workspace().alloc(Shape{batch_size, dim});
  {
    NoGradScope no_grad(g);
    for (int64_t s = 0; s < bn_splits; ++s) {
      Var* x = g.input(rows_of(view_k, s * sub, sub), "view2");
      Var* k = ops::l2_normalize(g, n.k_head->features(g, n.k_backbone->features(g, x, true), true));
      copy(rows_of(keys, s * sub, sub), k->value);
    }
  }

  phases.enter("loss");
  StepResult r;
  r.accuracy = g.workspace().alloc(Shape{1});
  r.loss = ops::infonce_loss(g, q, keys, n.queue.keys->t, temperature, r.accuracy);
  phases.enter("backward");
  g.backward(r.loss);
  // Before anything reads the gradients; in skip mode the optimizers and the enqueue read its flag.
  const int32_t* skip = nullptr;
  if (n.nonfinite) {
    n.nonfinite->check_step(step, r.loss->value);
    skip = n.skip_nonfinite ? n.nonfinite->skip_flag() : nullptr;
  }
  phases.enter("optimizer");
  n.opt_backbone->step(n.backbone->params(), n.backbone->grads(), lr);
  n.opt_head->step(n.head->params(), n.head->grads(), lr);
  phases.enter("enqueue");
  n.queue.ptr = ops::queue_enqueue(n.queue.keys->t, keys, n.queue.ptr, skip);
  phases.leave();
  return r;
}

}  // namespace tessera::moco
