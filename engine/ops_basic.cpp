// Element-wise and linear ops: the pattern every op follows.
//   1. check shapes and devices (messages name both shapes),
//   2. allocate the output from the graph's workspace and run the forward kernel,
//   3. if the output needs a gradient, record a closure that accumulates into the inputs'
//      gradients with the backward kernels.
#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/elementwise.h"

namespace tessera::ops {

Var* leaky_relu(Graph& g, Var* x, float slope) {
  Var* y = g.make(x->value.shape, {x});
  TS_DISPATCH(g.device(), leaky_relu_forward, x->value.f32(), y->value.f32(), x->value.numel(), slope);
  if (y->requires_grad) {
    g.record(slope == 0.0f ? "relu" : "leaky_relu", x->name, [&g, x, y, slope] {
      if (!x->requires_grad) return;
      TS_DISPATCH(g.device(), leaky_relu_backward, x->value.f32(), g.grad(y).f32(), g.grad(x).f32(),
                  x->value.numel(), slope);
    });
  }
  return y;
}

Var* relu(Graph& g, Var* x) { return leaky_relu(g, x, 0.0f); }

}  // namespace tessera::ops
