// batch_norm_relu_conv2d (declared in engine/ops.h): conv2d(leaky_relu(batch_norm2d(x))) as one
// tape node that does not keep the convolution's input.
//
// Why: the unfused ops keep, per convolution, BatchNorm's input x (its backward reads it) and
// the ReLU'd output z (the filter gradient and the ReLU's mask read it). Where z feeds nothing
// but the next convolution, this op keeps x and BatchNorm's per-channel statistics only, and
// makes z twice: in the forward, in workspace memory handed back when the op returns, and in
// the backward, again from x and the saved statistics (ops::detail::batch_norm_forward_again),
// then runs the convolution's, the ReLU's and BatchNorm's backward kernels on it. Cost: one
// memory-bound pass over z in the backward (read x, write z, 8 bytes an element, plus the
// in-place ReLU); saved: z for the whole step (docs/ARCHITECTURE-NOTES.md, "Step memory").
//
// The kernels, tiers, scratch and running-statistics update are the unfused ops' own (the
// same ops::detail functions), so on the CPU values and gradients are bit for bit those of
// the three ops (tests/ops_fused_test.cpp). On CUDA, z in the backward comes from cuDNN's
// inference call where the forward used its training call; the two may differ in the last
// bit, so gradients agree with the unfused ops to float rounding.
#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/ops_detail.h"
#include "engine/profile.h"
#include "kernels/elementwise.h"

namespace tessera::ops {
namespace {

const char* name_or(const Var* v, const char* fallback) { return v->name && v->name[0] ? v->name : fallback; }

// z = leaky_relu(batch_norm(x)) into z, in place as ops::leaky_relu_ computes it.
void normalise_and_activate(Graph& g, const detail::BatchNormSaved& s, const Var* x, const Var* gamma,
                            const Var* beta, float slope, const Tensor& z) {
  detail::batch_norm_forward_again(g, s, x, gamma, beta, z.f32());
  TS_DISPATCH(g.device(), leaky_relu_forward, z.f32(), z.f32(), z.numel(), slope);
}

}  // namespace

Var* batch_norm_relu_conv2d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                            const BatchNormOptions& opt, float slope, Var* w, Var* b, int stride, int pad) {
  const char* bn_layer = name_or(gamma, "batch_norm");
  const char* conv_layer = name_or(w, "conv2d");
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 4, bn_layer, ": batch_norm_relu_conv2d expects x (N, C, H, W), found ", xs.str());
  TS_CHECK(slope >= 0.0f, bn_layer, ": batch_norm_relu_conv2d expects slope >= 0 (the backward reads the ReLU's ",
           "sign from its output), found ", slope);
  const kernels::Conv2dShape s = detail::conv2d_shape(conv_layer, x->value, w, b, stride, pad);
  Var* y = g.make(Shape{s.n, s.o, s.ho, s.wo}, {x, gamma, beta, w, b});
  y->overwritable = true;  // the backward reads x, the statistics, gamma, beta and w, never y

  // z lives only while this op runs; BatchNorm's train forward writes it, the ReLU overwrites it.
  Workspace& ws = g.workspace();
  const Tensor z = ws.alloc(xs);
  detail::BatchNormSaved saved;
  {
    profile::LayerScope profile_layer(bn_layer, profile::LayerScope::kRefine);
    saved = detail::batch_norm_forward(g, bn_layer, x, gamma, beta, buf, opt, xs[0], xs[1], xs[2] * xs[3], z.f32());
    TS_DISPATCH(g.device(), leaky_relu_forward, z.f32(), z.f32(), z.numel(), slope);
  }
  {
    profile::LayerScope profile_layer(conv_layer, profile::LayerScope::kRefine);
    detail::conv2d_forward(g, s, z.f32(), w, b, y->value.f32());
  }
  ws.release(z);

  if (y->requires_grad) {
    g.record("batch_norm_relu_conv2d", conv_layer, [&g, x, gamma, beta, w, b, y, s, saved, slope, bn_layer,
                                                     conv_layer] {
      const bool bn_grads = x->requires_grad || gamma->requires_grad || beta->requires_grad;
      const bool conv_grads = w->requires_grad || (b && b->requires_grad);
      if (!bn_grads && !conv_grads) return;
      Workspace& ws = g.workspace();
      const Shape& xs = x->value.shape;
      const Tensor z = ws.alloc(xs);
      Tensor dz;  // the gradient of z, then of BatchNorm's output
      {
        profile::LayerScope profile_layer(bn_layer, profile::LayerScope::kRefine);
        normalise_and_activate(g, saved, x, gamma, beta, slope, z);
      }
      if (bn_grads) dz = ws.alloc(xs);  // the convolution writes it (no zero fill)
      {
        profile::LayerScope profile_layer(conv_layer, profile::LayerScope::kRefine);
        detail::conv2d_backward(g, s, z.f32(), w, b, g.grad(y).f32(), bn_grads ? dz.f32() : nullptr,
                                /*accumulate_dx=*/false);
      }
      if (bn_grads) {
        profile::LayerScope profile_layer(bn_layer, profile::LayerScope::kRefine);
        const Tensor dbn = ws.alloc(xs);  // the ReLU's backward writes it
        TS_DISPATCH(g.device(), leaky_relu_backward, z.f32(), dz.f32(), dbn.f32(), z.numel(), slope,
                    /*accumulate=*/false);
        ws.release(dz);
        ws.release(z);
        detail::batch_norm_backward(g, saved, x, gamma, beta, dbn.f32());
        ws.release(dbn);
      } else {
        ws.release(z);
      }
    });
  }
  return y;
}

}  // namespace tessera::ops
