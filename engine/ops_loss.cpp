// Losses, the row-wise l2_normalize that BYOL's loss is built on, and the no-grad prediction
// op. Each loss runs a per-row kernel into a workspace vector of row losses and takes their
// mean with sum_forward (scale 1/N); the backward kernels read d(loss) on the device and fold
// in the same 1/N. The label, target and weight tensors are read again by the backward, so
// they must stay unchanged until backward() has run.
#include <climits>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/l2_normalize.h"
#include "kernels/loss.h"
#include "kernels/reduce.h"

namespace tessera::ops {

namespace {

// logits must be (N, K) with N, K >= 1 (and K small enough for the int labels).
void check_logits(const char* op, const Tensor& logits) {
  const Shape& s = logits.shape;
  TS_CHECK(s.ndim == 2 && s[0] > 0 && s[1] > 0 && s[1] <= INT_MAX, op, ": expected logits (N, K), found ",
           s.str());
}

// A per-sample vector (labels or weights) must be (N), of the given dtype, on the logits' device.
void check_per_sample(const char* op, const char* what, const Tensor& logits, const Tensor& v, DType dtype) {
  TS_CHECK(v.shape == Shape{logits.shape[0]}, op, ": ", what, " ", v.shape.str(), " does not match logits ",
           logits.shape.str(), ", expected (", logits.shape[0], ")");
  TS_CHECK(v.dtype == dtype, op, ": ", what, " must be ", dtype_name(dtype), ", found ", v.str());
  check_same_device(op, logits, v);
}

// Mean of the row losses into a new scalar Var that needs a gradient when `from` does.
Var* batch_mean(Graph& g, const Tensor& row_loss, std::initializer_list<const Var*> from) {
  Var* loss = g.make(Shape{1}, from);
  const int64_t n = row_loss.numel();
  TS_DISPATCH(g.device(), sum_forward, row_loss.f32(), loss->value.f32(), n, 1.0f / static_cast<float>(n));
  return loss;
}

// Hard-label cross-entropy, optionally weighted per sample (weight undefined: all ones).
Var* cross_entropy_hard(Graph& g, Var* logits, const Tensor& labels, const Tensor& weight, const char* op) {
  check_logits(op, logits->value);
  check_per_sample(op, "labels", logits->value, labels, DType::I32);
  if (weight.defined()) check_per_sample(op, "weight", logits->value, weight, DType::F32);
  const int64_t n = logits->value.shape[0], k = logits->value.shape[1];
  Tensor row_loss = g.workspace().alloc(Shape{n});
  Tensor lse = g.workspace().alloc(Shape{n});
  const float* w = weight.defined() ? weight.f32() : nullptr;
  TS_DISPATCH(g.device(), cross_entropy_forward, logits->value.f32(), labels.i32(), w, row_loss.f32(), lse.f32(),
              n, k);
  Var* loss = batch_mean(g, row_loss, {logits});
  if (loss->requires_grad) {
    g.record(op, logits->name, [&g, logits, labels, w, lse, loss, n, k] {
      TS_DISPATCH(g.device(), cross_entropy_backward, logits->value.f32(), labels.i32(), w, lse.f32(),
                  g.grad(loss).f32(), 1.0f / static_cast<float>(n), g.grad(logits).f32(), n, k);
    });
  }
  return loss;
}

}  // namespace

Var* l2_normalize(Graph& g, Var* x, float eps) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 2 && xs[0] > 0 && xs[1] > 0, "l2_normalize: expected x (N, D), found ", xs.str());
  const int64_t n = xs[0], d = xs[1];
  Var* y = g.make(xs, {x});
  Tensor norm = g.workspace().alloc(Shape{n});
  TS_DISPATCH(g.device(), l2_normalize_forward, x->value.f32(), y->value.f32(), norm.f32(), n, d, eps);
  if (y->requires_grad) {
    g.record("l2_normalize", x->name, [&g, x, y, norm, n, d, eps] {
      TS_DISPATCH(g.device(), l2_normalize_backward, y->value.f32(), norm.f32(), g.grad(y).f32(), g.grad(x).f32(),
                  n, d, eps);
    });
  }
  return y;
}

Var* byol_loss(Graph& g, Var* p, Var* z) {
  const Shape &ps = p->value.shape, &zs = z->value.shape;
  TS_CHECK(ps == zs, "byol_loss: p ", ps.str(), " and z ", zs.str(), " differ");
  TS_CHECK(ps.ndim == 2 && ps[0] > 0 && ps[1] > 0, "byol_loss: expected p and z (N, D), found ", ps.str());
  const int64_t n = ps[0], d = ps[1];
  constexpr float kEps = 1e-12f;  // F.normalize's default, as the official BYOL loss
  Tensor row_loss = g.workspace().alloc(Shape{n});
  TS_DISPATCH(g.device(), byol_loss_forward, p->value.f32(), z->value.f32(), row_loss.f32(), n, d, kEps);
  Var* loss = batch_mean(g, row_loss, {p, z});
  if (loss->requires_grad) {
    g.record("byol_loss", p->name, [&g, p, z, loss, n, d] {
      float* dp = p->requires_grad ? g.grad(p).f32() : nullptr;
      float* dz = z->requires_grad ? g.grad(z).f32() : nullptr;
      TS_DISPATCH(g.device(), byol_loss_backward, p->value.f32(), z->value.f32(), g.grad(loss).f32(),
                  1.0f / static_cast<float>(n), dp, dz, n, d, kEps);
    });
  }
  return loss;
}

Var* cross_entropy(Graph& g, Var* logits, const Tensor& labels) {
  return cross_entropy_hard(g, logits, labels, Tensor(), "cross_entropy");
}

Var* cross_entropy_weighted(Graph& g, Var* logits, const Tensor& labels, const Tensor& weight) {
  TS_CHECK(weight.defined(), "cross_entropy_weighted: no weight tensor given");
  return cross_entropy_hard(g, logits, labels, weight, "cross_entropy_weighted");
}

Var* cross_entropy_soft(Graph& g, Var* logits, const Tensor& targets) {
  check_logits("cross_entropy_soft", logits->value);
  TS_CHECK(targets.shape == logits->value.shape, "cross_entropy_soft: targets ", targets.shape.str(),
           " and logits ", logits->value.shape.str(), " differ");
  check_same_device("cross_entropy_soft", logits->value, targets);
  const int64_t n = logits->value.shape[0], k = logits->value.shape[1];
  Tensor row_loss = g.workspace().alloc(Shape{n});
  Tensor lse = g.workspace().alloc(Shape{n});
  TS_DISPATCH(g.device(), cross_entropy_soft_forward, logits->value.f32(), targets.f32(), row_loss.f32(), lse.f32(),
              n, k);
  Var* loss = batch_mean(g, row_loss, {logits});
  if (loss->requires_grad) {
    g.record("cross_entropy_soft", logits->name, [&g, logits, targets, lse, loss, n, k] {
      TS_DISPATCH(g.device(), cross_entropy_soft_backward, logits->value.f32(), targets.f32(), lse.f32(),
                  g.grad(loss).f32(), 1.0f / static_cast<float>(n), g.grad(logits).f32(), n, k);
    });
  }
  return loss;
}

void argmax_max_prob(const Tensor& logits, const Tensor& argmax, const Tensor& max_prob) {
  check_logits("argmax_max_prob", logits);
  check_per_sample("argmax_max_prob", "argmax", logits, argmax, DType::I32);
  check_per_sample("argmax_max_prob", "max_prob", logits, max_prob, DType::F32);
  TS_DISPATCH(logits.device, argmax_max_prob, logits.f32(), argmax.i32(), max_prob.f32(), logits.shape[0],
              logits.shape[1]);
}

}  // namespace tessera::ops
