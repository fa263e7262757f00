#include "apps/moco/step.h"

#include <utility>

#include "engine/check.h"
#include "engine/distributed.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"

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

// The key encoder on x (n, C, H, W) as `splits` sub-batches, each normalised with its own
// statistics (and moving the key encoder's running statistics once): keys (n, D).
void encode_keys(Nets& n, Graph& g, const Tensor& x, int64_t splits, const Tensor& keys) {
  const int64_t count = x.shape[0];
  TS_CHECK(splits >= 1 && count % splits == 0, "moco: a key batch of ", count, " is not a multiple of ", splits,
           " BN sub-batches");
  const int64_t sub = count / splits;
  NoGradScope no_grad(g);
  for (int64_t s = 0; s < splits; ++s) {
    Var* in = g.input(rows_of(x, s * sub, sub), "view2");
    Var* k = ops::l2_normalize(g, n.k_head->features(g, n.k_backbone->features(g, in, true), true));
    copy(rows_of(keys, s * sub, sub), k->value);
  }
}

}  // namespace

std::vector<int64_t> key_shuffle(uint64_t seed, int64_t step, int64_t n) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[static_cast<size_t>(i)] = i;
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamKeyShuffle, static_cast<uint64_t>(step)), 0);
  for (int64_t i = n - 1; i >= 1; --i) {
    const int64_t j = static_cast<int64_t>((uint64_t{s.next_u32()} * static_cast<uint64_t>(i + 1)) >> 32);
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

std::vector<int64_t> inverse_permutation(const std::vector<int64_t>& perm) {
  std::vector<int64_t> inverse(perm.size(), -1);
  for (size_t i = 0; i < perm.size(); ++i) {
    const int64_t p = perm[i];
    TS_CHECK(p >= 0 && p < static_cast<int64_t>(perm.size()) && inverse[static_cast<size_t>(p)] < 0,
             "inverse_permutation: ", p, " at ", i, " is out of range or repeated");
    inverse[static_cast<size_t>(p)] = static_cast<int64_t>(i);
  }
  return inverse;
}

void gather_rows(const Tensor& dst, const Tensor& src, const int64_t* rows) {
  TS_CHECK(dst.numel() / dst.shape[0] == src.numel() / src.shape[0] && dst.dtype == src.dtype &&
               dst.device == src.device,
           "gather_rows: rows of ", dst.str(), " and ", src.str(), " differ");
  for (int64_t i = 0; i < dst.shape[0]; ++i) {
    TS_CHECK(rows[i] >= 0 && rows[i] < src.shape[0], "gather_rows: row ", rows[i], " of ", src.str());
    copy(rows_of(dst, i, 1), rows_of(src, rows[i], 1));
  }
}

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

  phases.enter("teacher_forward");
  const int64_t local = view_k.shape[0], dim = q->value.shape[1];
  const int ranks = n.ranks ? n.ranks->size() : 1, rank = n.ranks ? n.ranks->rank() : 0;
  TS_CHECK(bn_splits % ranks == 0, "moco: --bn-splits ", bn_splits, " is not a multiple of the ", ranks, " ranks");
  Tensor keys;      // (local, D): the positives of this rank's queries
  Tensor enqueued;  // (R local, D): the global batch's keys, in global order
  if (ranks == 1) {
    // Split BN: each sub-batch of keys is normalised with its own statistics, so a key's BN
    // statistics are not the ones its query saw over the whole batch - the single-device
    // stand-in for shuffle BN (docs/moco.md).
    keys = g.workspace().alloc(Shape{local, dim});
    encode_keys(n, g, view_k, bn_splits, keys);
    enqueued = keys;
  } else {
    // Shuffle BN (step.h): the global key batch, this rank's slice of its permutation through
    // the key encoder, the slices' keys gathered and put back in global order.
    const int64_t global = local * ranks;
    Shape all_views = view_k.shape;
    all_views.dims[0] = global;
    Tensor views = g.workspace().alloc(all_views);
    n.ranks->all_gather(view_k.f32(), views.f32(), view_k.numel(), view_k.device, "the key views (shuffle BN)");
    const std::vector<int64_t> perm = key_shuffle(n.shuffle_seed, step, global);
    Tensor slice = g.workspace().alloc(view_k.shape);
    gather_rows(slice, views, perm.data() + rank * local);
    Tensor shuffled = g.workspace().alloc(Shape{global, dim});
    encode_keys(n, g, slice, bn_splits / ranks, rows_of(shuffled, rank * local, local));
    n.ranks->all_gather(shuffled.f32() + rank * local * dim, shuffled.f32(), local * dim, shuffled.device,
                        "the keys (shuffle BN)");
    enqueued = g.workspace().alloc(Shape{global, dim});
    gather_rows(enqueued, shuffled, inverse_permutation(perm).data());
    keys = rows_of(enqueued, rank * local, local);
  }

  phases.enter("loss");
  StepResult r;
  r.accuracy = g.workspace().alloc(Shape{1});
  r.loss = ops::infonce_loss(g, q, keys, n.queue.keys->t, temperature, r.accuracy);
  phases.enter("backward");
  g.backward(r.loss);
  if (ranks > 1) {
    // Data parallel: each rank's loss is the mean over its shard, so the mean of the ranks'
    // gradients is the gradient of the global batch (byol/step.cpp says more).
    phases.enter("gradient_all_reduce");
    dist::all_reduce_mean_arena(*n.ranks, n.head->grads(), "the head's gradients");
    dist::all_reduce_mean_arena(*n.ranks, n.backbone->grads(), "the backbone's gradients");
  }
  // After the all-reduce (every rank judges the same gradients), before anything reads them;
  // in skip mode the optimizers and the enqueue read its flag.
  const int32_t* skip = nullptr;
  if (n.nonfinite) {
    n.nonfinite->check_step(step, r.loss->value);
    skip = n.skip_nonfinite ? n.nonfinite->skip_flag() : nullptr;
  }
  phases.enter("optimizer");
  n.opt_backbone->step(n.backbone->params(), n.backbone->grads(), lr);
  n.opt_head->step(n.head->params(), n.head->grads(), lr);
  // Every rank enqueues the whole global batch: the queues stay identical without a collective.
  phases.enter("enqueue");
  ops::queue_enqueue(n.queue.keys->t, enqueued, n.queue.ptr->t, skip);
  phases.leave();
  return r;
}

}  // namespace tessera::moco
