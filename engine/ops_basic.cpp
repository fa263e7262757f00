// Element-wise, linear and reduction ops: the pattern every op follows.
//   1. check shapes and devices (messages name both shapes),
//   2. allocate the output from the graph's workspace and run the forward kernel,
//   3. if the output needs a gradient, record a closure that accumulates into the gradients
//      of the inputs that need one, with the backward kernels.
#include <climits>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"
#include "kernels/reduce.h"

namespace tessera::ops {

namespace {
// BLAS and the row kernels index with int; every dimension a model has is far below this.
constexpr int64_t kMaxDim = INT_MAX;
}  // namespace

Var* linear(Graph& g, Var* x, Var* w, Var* b) {
  const Shape &xs = x->value.shape, &ws = w->value.shape;
  TS_CHECK(xs.ndim == 2 && ws.ndim == 2, "linear: expected x (N, IN) and w (OUT, IN), found x ", xs.str(),
           " and w ", ws.str());
  TS_CHECK(xs[1] == ws[1], "linear: x ", xs.str(), " and w ", ws.str(), " disagree on IN (", xs[1], " vs ", ws[1],
           ")");
  const int64_t n = xs[0], in = xs[1], out = ws[0];
  TS_CHECK(n > 0 && in > 0 && out > 0 && n <= kMaxDim && in <= kMaxDim && out <= kMaxDim,
           "linear: x ", xs.str(), " and w ", ws.str(), " need sizes in [1, 2^31)");
  if (b) {
    TS_CHECK(b->value.shape == Shape{out}, "linear: bias ", b->value.shape.str(), " does not match w ", ws.str(),
             ", expected (", out, ")");
  }
  profile::LayerScope layer(w->name, profile::LayerScope::kRefine);  // names the kernels in profiles
  Var* y = g.make(Shape{n, out}, {x, w, b});
  y->overwritable = true;  // the backward reads x and w, never y
  TS_DISPATCH(g.device(), linear_forward, x->value.f32(), w->value.f32(), b ? b->value.f32() : nullptr,
              y->value.f32(), n, in, out);
  if (y->requires_grad) {
    g.record("linear", w->name, [&g, x, w, b, y, n, in, out] {
      const float* dy = g.grad(y).f32();
      if (x->requires_grad)
        TS_TIER_DISPATCH(g.device(), linear_backward_input, dy, w->value.f32(), g.grad(x).f32(), n, in, out);
      if (w->requires_grad)
        TS_TIER_DISPATCH(g.device(), linear_backward_weight, dy, x->value.f32(), g.grad(w).f32(), n, in, out);
      if (b && b->requires_grad) TS_DISPATCH(g.device(), linear_backward_bias, dy, g.grad(b).f32(), n, out);
    });
  }
  return y;
}

namespace {
// dx += s dy, or dx = s dy when this is the first contribution to x's gradient (no zero fill).
void pass_down(Graph& g, const float* dy, Var* x, int64_t n, float s) {
  bool accumulate = false;
  float* dx = g.grad_to_write(x, &accumulate).f32();
  if (accumulate) TS_DISPATCH(g.device(), scale_accumulate, dy, dx, n, s);
  else TS_DISPATCH(g.device(), scale_forward, dy, dx, n, s);
}

// y = a + b into `y` (a's own memory for add_); the backward reads no values.
Var* add_into(Graph& g, const Tensor& a_value, Var* a, Var* b, Var* y) {
  const int64_t n = a_value.numel();
  y->overwritable = true;
  TS_DISPATCH(g.device(), add_forward, a_value.f32(), b->value.f32(), y->value.f32(), n);
  if (y->requires_grad) {
    g.record("add", a->name, [&g, a, b, y, n] {
      // b first, then a takes over dy's buffer where it can rather than a copy of it. a and b may
      // be the same Var (x + x): then a's gradient exists by then and the second contribution adds.
      const float* dy = g.grad(y).f32();
      if (b->requires_grad) pass_down(g, dy, b, n, 1.0f);
      if (a->requires_grad && !g.take_over_grad(a, y)) pass_down(g, dy, a, n, 1.0f);
    });
  }
  return y;
}

void check_add(Var* a, Var* b) {
  TS_CHECK(a->value.shape == b->value.shape, "add: shapes differ, a ", a->value.shape.str(), " and b ",
           b->value.shape.str());
}
}  // namespace

Var* add(Graph& g, Var* a, Var* b) {
  check_add(a, b);
  return add_into(g, a->value, a, b, g.make(a->value.shape, {a, b}));
}

Var* add_(Graph& g, Var* a, Var* b) {
  check_add(a, b);
  if (!a->overwritable || !a->owns_value || a == b) return add(g, a, b);
  // y takes over a's memory: the kernel reads a and writes y element by element, in place.
  const Tensor a_value = a->value;
  Var* y = g.take_over(a, {a, b});
  return add_into(g, a_value, a, b, y);
}

Var* scale(Graph& g, Var* x, float s) {
  Var* y = g.make(x->value.shape, {x});
  const int64_t n = x->value.numel();
  TS_DISPATCH(g.device(), scale_forward, x->value.f32(), y->value.f32(), n, s);
  if (y->requires_grad) {
    g.record("scale", x->name, [&g, x, y, n, s] {
      pass_down(g, g.grad(y).f32(), x, n, s);
    });
  }
  return y;
}

namespace {
// y = leaky_relu(x) into `y` (x's own memory for the in-place form). The backward reads y only
// (kernels/common/activation.h), which is what lets the in-place form overwrite x.
Var* leaky_relu_into(Graph& g, const Tensor& x_value, Var* x, Var* y, float slope) {
  TS_CHECK(slope >= 0.0f, "leaky_relu: expected slope >= 0 (the backward reads the sign from the output), found ",
           slope);
  TS_DISPATCH(g.device(), leaky_relu_forward, x_value.f32(), y->value.f32(), x_value.numel(), slope);
  if (y->requires_grad) {
    g.record(slope == 0.0f ? "relu" : "leaky_relu", x->name, [&g, x, y, slope] {
      if (!x->requires_grad) return;
      bool accumulate = false;
      float* dx = g.grad_to_write(x, &accumulate).f32();
      TS_DISPATCH(g.device(), leaky_relu_backward, y->value.f32(), g.grad(y).f32(), dx, y->value.numel(), slope,
                  accumulate);
    });
  }
  return y;
}
}  // namespace

Var* leaky_relu(Graph& g, Var* x, float slope) {
  return leaky_relu_into(g, x->value, x, g.make(x->value.shape, {x}), slope);
}

Var* leaky_relu_(Graph& g, Var* x, float slope) {
  if (!x->overwritable || !x->owns_value) return leaky_relu(g, x, slope);
  const Tensor x_value = x->value;
  return leaky_relu_into(g, x_value, x, g.take_over(x, {x}), slope);
}

Var* relu(Graph& g, Var* x) { return leaky_relu(g, x, 0.0f); }
Var* relu_(Graph& g, Var* x) { return leaky_relu_(g, x, 0.0f); }

Var* flatten(Graph& g, Var* x) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim >= 2, "flatten: expected (N, ...) with at least 2 dims, found ", xs.str());
  const Shape flat{xs[0], xs.numel() / xs[0]};
  // A view: the output shares x's memory, and its gradient is x's gradient buffer seen
  // with the flat shape, so whatever the consumers accumulate lands in x's gradient
  // directly. Nothing to record on the tape.
  Var* y = g.input(x->value.reshape(flat), x->name);
  if (g.grad_enabled() && x->requires_grad) {
    y->requires_grad = true;
    y->grad = g.grad(x).reshape(flat);
  }
  return y;
}

namespace {
// y = scale * sum(x), the shared body of sum and mean.
Var* scaled_sum(Graph& g, Var* x, float s, const char* op) {
  const int64_t n = x->value.numel();
  TS_CHECK(n > 0, op, ": empty input ", x->value.shape.str());
  Var* y = g.make(Shape{1}, {x});
  TS_DISPATCH(g.device(), sum_forward, x->value.f32(), y->value.f32(), n, s);
  if (y->requires_grad) {
    g.record(op, x->name, [&g, x, y, n, s] {
      TS_DISPATCH(g.device(), sum_backward, g.grad(y).f32(), g.grad(x).f32(), n, s);
    });
  }
  return y;
}
}  // namespace

Var* sum(Graph& g, Var* x) { return scaled_sum(g, x, 1.0f, "sum"); }

Var* mean(Graph& g, Var* x) {
  return scaled_sum(g, x, 1.0f / static_cast<float>(x->value.numel()), "mean");
}

}  // namespace tessera::ops
