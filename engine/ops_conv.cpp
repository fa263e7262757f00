// Convolution and pooling ops (declared in engine/ops.h). Shapes are checked here with
// messages naming the layer and both shapes; the kernels (kernels/conv.h, kernels/pool.h)
// assume valid input. Memory comes from the graph's workspace, so a step allocates nothing: the
// convolution's scratch (im2col columns, the cuDNN workspace, oneDNN's scratchpad and reorder
// buffers) from its scratch region, dead when the kernel returns; max-pool indices, kept for the
// backward, from its bump allocator.
//
// On the CPU the convolution runs on the tier engine/cpu_kernels.h selects: the reference
// (kernels/cpu) or the fast tier (kernels/onednn, same signatures), through TS_TIER_DISPATCH
// (engine/dispatch.h): the fast tier's calls are profiled under their own names
// ("conv2d_forward_onednn") with the family's cost.
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/ops_detail.h"
#include "kernels/conv.h"
#include "kernels/pool.h"

namespace tessera::ops {
namespace {

const char* layer_of(const Var* v) { return v && v->name && v->name[0] ? v->name : "conv2d"; }

}  // namespace

namespace detail {

kernels::Conv2dShape conv2d_shape(const char* layer, const Tensor& x, const Var* w, const Var* b, int stride,
                                  int pad) {
  const Shape& xs = x.shape;
  const Shape& ws = w->value.shape;
  TS_CHECK(xs.ndim == 4, layer, ": conv2d expects x (N, C, H, W), found ", xs.str());
  TS_CHECK(ws.ndim == 4, layer, ": conv2d expects w (O, C, KH, KW), found ", ws.str());
  TS_CHECK(xs[1] == ws[1], layer, ": conv2d input has ", xs[1], " channels, the weight ", ws.str(), " expects ",
           ws[1]);
  TS_CHECK(stride >= 1 && pad >= 0, layer, ": conv2d needs stride >= 1 and pad >= 0, found stride ", stride,
           ", pad ", pad);
  if (b) {
    TS_CHECK(b->value.shape == Shape{ws[0]}, layer, ": conv2d bias should be (", ws[0], "), found ",
             b->value.shape.str());
    check_same_device("conv2d bias", b->value, w->value);
  }
  check_same_device("conv2d", x, w->value);
  kernels::Conv2dShape s;
  s.n = xs[0], s.c = xs[1], s.h = xs[2], s.w = xs[3];
  s.o = ws[0], s.kh = ws[2], s.kw = ws[3];
  s.stride = stride, s.pad = pad;
  TS_CHECK(s.h + 2 * pad >= s.kh && s.w + 2 * pad >= s.kw, layer, ": conv2d kernel ", ws.str(),
           " is larger than the padded input ", xs.str(), " (pad ", pad, ")");
  s.ho = (s.h + 2 * pad - s.kh) / stride + 1;
  s.wo = (s.w + 2 * pad - s.kw) / stride + 1;
  return s;
}

void conv2d_forward(Graph& g, const kernels::Conv2dShape& s, const float* x, const Var* w, const Var* b, float* y) {
  size_t scratch_bytes = 0;
  TS_TIER_DISPATCH(g.device(), conv2d_workspace_size, s, kernels::ConvPass::Forward, &scratch_bytes);
  void* scratch = g.workspace().scratch(scratch_bytes);
  TS_TIER_DISPATCH(g.device(), conv2d_forward, s, x, w->value.f32(), b ? b->value.f32() : nullptr, y, scratch,
                   scratch_bytes);
}

void conv2d_backward(Graph& g, const kernels::Conv2dShape& s, const float* x, Var* w, Var* b, const float* dy,
                     float* dx, bool accumulate_dx) {
  float* dw = w->requires_grad ? g.grad(w).f32() : nullptr;
  float* db = b && b->requires_grad ? g.grad(b).f32() : nullptr;
  if (!dx && !dw && !db) return;
  size_t scratch_bytes = 0;
  TS_TIER_DISPATCH(g.device(), conv2d_workspace_size, s, kernels::ConvPass::Backward, &scratch_bytes);
  void* scratch = g.workspace().scratch(scratch_bytes);
  TS_TIER_DISPATCH(g.device(), conv2d_backward, s, x, w->value.f32(), dy, dx, dw, db, accumulate_dx, scratch,
                   scratch_bytes);
}

}  // namespace detail

Var* conv2d(Graph& g, Var* x, Var* w, Var* b, int stride, int pad) {
  const char* layer = layer_of(w);
  profile::LayerScope profile_layer(layer, profile::LayerScope::kRefine);  // names the kernels
  const kernels::Conv2dShape s = detail::conv2d_shape(layer, x->value, w, b, stride, pad);
  Var* y = g.make(Shape{s.n, s.o, s.ho, s.wo}, {x, w, b});
  y->overwritable = true;  // the backward reads x and w, never y
  detail::conv2d_forward(g, s, x->value.f32(), w, b, y->value.f32());
  if (y->requires_grad) {
    g.record("conv2d", layer, [&g, x, w, b, y, s] {
      bool add_dx = false;  // false also when this is the first contribution to x's gradient
      float* dx = x->requires_grad ? g.grad_to_write(x, &add_dx).f32() : nullptr;
      detail::conv2d_backward(g, s, x->value.f32(), w, b, g.grad(y).f32(), dx, add_dx);
    });
  }
  return y;
}

Var* max_pool2d(Graph& g, Var* x, int kernel, int stride, int pad) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 4, "max_pool2d expects x (N, C, H, W), found ", xs.str());
  TS_CHECK(kernel >= 1 && stride >= 1 && pad >= 0 && 2 * pad <= kernel, "max_pool2d needs kernel, stride >= 1 ",
           "and 0 <= pad <= kernel / 2 (so every window holds an input element), found kernel ", kernel,
           ", stride ", stride, ", pad ", pad);
  TS_CHECK(xs[2] + 2 * pad >= kernel && xs[3] + 2 * pad >= kernel, "max_pool2d kernel ", kernel,
           " is larger than the padded input ", xs.str(), " (pad ", pad, ")");
  const int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3];
  const int64_t ho = (h + 2 * pad - kernel) / stride + 1, wo = (w + 2 * pad - kernel) / stride + 1;
  Var* y = g.make(Shape{xs[0], xs[1], ho, wo}, {x});
  Tensor argmax = g.workspace().alloc(y->value.shape, DType::I32);
  TS_DISPATCH(g.device(), max_pool2d_forward, x->value.f32(), y->value.f32(), argmax.i32(), planes, h, w, ho, wo,
              kernel, stride, pad);
  if (y->requires_grad) {
    g.record("max_pool2d", x->name, [&g, x, y, argmax, planes, h, w, ho, wo, kernel, stride, pad] {
      TS_DISPATCH(g.device(), max_pool2d_backward, g.grad(y).f32(), argmax.i32(), g.grad(x).f32(), planes, h, w,
                  ho, wo, kernel, stride, pad);
    });
  }
  return y;
}

Var* global_avg_pool(Graph& g, Var* x) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 4, "global_avg_pool expects x (N, C, H, W), found ", xs.str());
  const int64_t planes = xs[0] * xs[1], hw = xs[2] * xs[3];
  TS_CHECK(hw > 0, "global_avg_pool needs a non-empty image, found ", xs.str());
  Var* y = g.make(Shape{xs[0], xs[1]}, {x});
  TS_DISPATCH(g.device(), global_avg_pool_forward, x->value.f32(), y->value.f32(), planes, hw);
  if (y->requires_grad) {
    g.record("global_avg_pool", x->name, [&g, x, y, planes, hw] {
      TS_DISPATCH(g.device(), global_avg_pool_backward, g.grad(y).f32(), g.grad(x).f32(), planes, hw);
    });
  }
  return y;
}

}  // namespace tessera::ops
