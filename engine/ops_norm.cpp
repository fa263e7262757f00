// Batch normalisation ops (declared in engine/ops.h); l2_normalize lives with the losses.
// Train mode normalises with the batch statistics and folds them into the running ones
// (PyTorch's momentum convention, unbiased variance, num_batches += 1), whether or not
// gradients are recorded: a teacher's no-grad forward in train mode updates its own running
// statistics, as the official STS code does. Eval mode normalises with the running statistics.
// num_batches is counted by the graph (Graph::count_batch): one launch a step for all layers.
// The backward kernels write all three gradients; an input that needs none gets workspace
// scratch, which the kernel overwrites rather than adds into (kernels::BnAccumulate).
#include <vector>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/distributed.h"
#include "engine/ops.h"
#include "engine/ops_detail.h"
#include "kernels/batch_norm.h"
#include "kernels/sync_batch_norm.h"

namespace tessera::ops {
namespace {

const char* layer_of(const Var* v) { return v->name && v->name[0] ? v->name : "batch_norm"; }

// The backward's three outputs: the gradient where the input needs one (added into, or written
// when it is the first contribution to x's), else workspace memory (overwritten, never read),
// handed back when the kernel has run.
struct Outputs {
  float *dx, *dgamma, *dbeta;
  uint32_t accumulate = 0;
  Graph* g = nullptr;
  std::vector<float*> unwanted;
  Outputs() = default;
  Outputs(const Outputs&) = delete;
  ~Outputs() {
    for (float* p : unwanted) g->workspace().release(p);
  }
};
void outputs(Graph& g, Var* x, Var* gamma, Var* beta, int64_t c, Outputs& o) {
  o.g = &g;
  auto unwanted = [&](Shape s) { return o.unwanted.emplace_back(g.workspace().alloc(s).f32()); };
  bool add_dx = false;  // false also when x's gradient is new: the kernel writes it, no zero fill first
  o.dx = x->requires_grad ? g.grad_to_write(x, &add_dx).f32() : unwanted(x->value.shape);
  o.dgamma = gamma->requires_grad ? g.grad(gamma).f32() : unwanted(Shape{c});
  o.dbeta = beta->requires_grad ? g.grad(beta).f32() : unwanted(Shape{c});
  o.accumulate = (add_dx ? kernels::kBnAccumulateDx : 0u) |
                 (gamma->requires_grad ? kernels::kBnAccumulateDgamma : 0u) |
                 (beta->requires_grad ? kernels::kBnAccumulateDbeta : 0u);
}

// The CUDA kernels' per-segment partial sums (kernels/batch_norm.h; a few KiB, unused on the
// CPU), from the workspace's scratch.
float* partial_sums(Graph& g, int64_t n, int64_t c, int64_t hw) {
  return static_cast<float*>(g.workspace().scratch(size_t(kernels::batch_norm_scratch(n, c, hw)) * sizeof(float)));
}

// SyncBN's train mode (kernels/sync_batch_norm.h): x (N, C, HW) is this rank's shard; the
// statistics are those of the global batch, one all-reduce of 2C doubles each way.
void sync_batch_norm_train(Graph& g, Var* x, Var* gamma, Var* beta, float* y, const BatchNormBuffers& buf,
                           const BatchNormOptions& opt, dist::Communicator& group, detail::BatchNormSaved& s) {
  Workspace& ws = g.workspace();
  const int64_t n = s.n, c = s.c, hw = s.hw;
  // Doubles (2, C) as 4C floats of workspace (each allocation is 256-byte aligned).
  auto doubles = [&](int64_t count) { return reinterpret_cast<double*>(ws.alloc(Shape{2 * count}).f32()); };
  double* sums = doubles(2 * c);
  s.mean = ws.alloc(Shape{c}).f32();
  s.var = ws.alloc(Shape{c}).f32();
  s.invstd = ws.alloc(Shape{c}).f32();
  // Shifted by the running mean (identical on every rank): see kernels/sync_batch_norm.h.
  TS_DISPATCH(g.device(), batch_norm_sums, x->value.f32(), buf.running_mean.f32(), sums, n, c, hw);
  group.all_reduce_sum(sums, 2 * c, g.device(), "SyncBN forward statistics");
  // Every rank's shard has the same N HW (the sampler splits the global batch evenly).
  s.count = static_cast<double>(n * hw) * group.size();
  s.group = &group;
  TS_DISPATCH(g.device(), batch_norm_sync_stats, sums, s.count, s.mean, s.var, s.invstd, buf.running_mean.f32(),
              buf.running_var.f32(), c, opt.momentum, opt.eps);
  TS_DISPATCH(g.device(), batch_norm_forward_eval, x->value.f32(), gamma->value.f32(), beta->value.f32(), s.mean,
              s.var, y, n, c, hw, opt.eps);
}

void sync_batch_norm_backward(Graph& g, const detail::BatchNormSaved& s, Var* x, Var* gamma, const float* dy,
                              Outputs& o) {
  Workspace& w = g.workspace();
  double* local = reinterpret_cast<double*>(w.alloc(Shape{4 * s.c}).f32());
  double* global = reinterpret_cast<double*>(w.alloc(Shape{4 * s.c}).f32());
  TS_DISPATCH(g.device(), batch_norm_backward_sums, x->value.f32(), dy, s.mean, s.invstd, local, global, s.n, s.c,
              s.hw);
  s.group->all_reduce_sum(global, 2 * s.c, g.device(), "SyncBN backward sums");
  TS_DISPATCH(g.device(), batch_norm_backward_apply, x->value.f32(), dy, gamma->value.f32(), s.mean, s.invstd, local,
              global, s.count, o.dx, o.dgamma, o.dbeta, s.n, s.c, s.hw, o.accumulate);
  w.release(reinterpret_cast<float*>(global));
  w.release(reinterpret_cast<float*>(local));
}

// x viewed as (N, C, HW).
Var* batch_norm(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf, const BatchNormOptions& opt,
                int64_t n, int64_t c, int64_t hw) {
  const char* layer = layer_of(gamma);
  profile::LayerScope profile_layer(layer, profile::LayerScope::kRefine);  // names the kernels
  Var* y = g.make(x->value.shape, {x, gamma, beta});
  y->overwritable = true;  // the backward reads x and the saved statistics, never y
  const detail::BatchNormSaved s =
      detail::batch_norm_forward(g, layer, x, gamma, beta, buf, opt, n, c, hw, y->value.f32());
  if (y->requires_grad) {
    g.record("batch_norm", layer, [&g, x, gamma, beta, y, s] {
      detail::batch_norm_backward(g, s, x, gamma, beta, g.grad(y).f32());
    });
  }
  return y;
}

}  // namespace

namespace detail {

BatchNormSaved batch_norm_forward(Graph& g, const char* layer, Var* x, Var* gamma, Var* beta,
                                  const BatchNormBuffers& buf, const BatchNormOptions& opt, int64_t n, int64_t c,
                                  int64_t hw, float* y) {
  const Shape channel{c};
  TS_CHECK(gamma->value.shape == channel && beta->value.shape == channel, layer, ": batch_norm of ", c,
           " channels needs gamma and beta (", c, "), found ", gamma->value.shape.str(), " and ",
           beta->value.shape.str());
  TS_CHECK(buf.running_mean.shape == channel && buf.running_var.shape == channel, layer, ": batch_norm of ", c,
           " channels needs running_mean and running_var (", c, "), found ", buf.running_mean.shape.str(), " and ",
           buf.running_var.shape.str());
  TS_CHECK(buf.num_batches.numel() == 1, layer, ": batch_norm num_batches should be (1), found ",
           buf.num_batches.shape.str());
  const Tensor* others[] = {&gamma->value, &beta->value, &buf.running_mean, &buf.running_var, &buf.num_batches};
  for (const Tensor* t : others) check_same_device("batch_norm", x->value, *t);
  TS_CHECK(opt.eps > 0 && opt.momentum >= 0 && opt.momentum <= 1, layer,
           ": batch_norm needs eps > 0 and 0 <= momentum <= 1, found eps ", opt.eps, ", momentum ", opt.momentum);
  TS_CHECK(!opt.train || n * hw > 1, layer, ": batch_norm in train mode needs more than one value per channel, ",
           "found input ", x->value.shape.str());

  BatchNormSaved s;
  s.n = n, s.c = c, s.hw = hw, s.eps = opt.eps, s.train = opt.train;
  dist::Communicator* group = g.batch_norm_group();
  if (opt.train && group && group->size() > 1) {
    sync_batch_norm_train(g, x, gamma, beta, y, buf, opt, *group, s);
    g.count_batch(buf.num_batches);
  } else if (opt.train) {
    // Batch mean and inverse std for the backward: two workspace allocations, each aligned
    // (256 bytes) as cuDNN's resultSaveMean / resultSaveInvVariance expect; one (2, C) block
    // would put the inverse std at an offset of C floats.
    s.mean = g.workspace().alloc(Shape{c}).f32();
    s.invstd = g.workspace().alloc(Shape{c}).f32();
    TS_DISPATCH(g.device(), batch_norm_forward_train, x->value.f32(), gamma->value.f32(), beta->value.f32(), y,
                buf.running_mean.f32(), buf.running_var.f32(), s.mean, s.invstd, n, c, hw, opt.momentum, opt.eps,
                partial_sums(g, n, c, hw));
    g.count_batch(buf.num_batches);
  } else {
    s.running_mean = buf.running_mean, s.running_var = buf.running_var;
    TS_DISPATCH(g.device(), batch_norm_forward_eval, x->value.f32(), gamma->value.f32(), beta->value.f32(),
                s.running_mean.f32(), s.running_var.f32(), y, n, c, hw, opt.eps);
  }
  return s;
}

void batch_norm_forward_again(Graph& g, const BatchNormSaved& s, const Var* x, const Var* gamma, const Var* beta,
                              float* y) {
  const float* xv = x->value.f32();
  if (!s.train) {
    TS_DISPATCH(g.device(), batch_norm_forward_eval, xv, gamma->value.f32(), beta->value.f32(),
                s.running_mean.f32(), s.running_var.f32(), y, s.n, s.c, s.hw, s.eps);
  } else if (s.group) {  // SyncBN's forward is this very call
    TS_DISPATCH(g.device(), batch_norm_forward_eval, xv, gamma->value.f32(), beta->value.f32(), s.mean, s.var, y,
                s.n, s.c, s.hw, s.eps);
  } else {
    // The train forward wrote y = x scale + shift with scale = gamma invstd (a float product) and
    // shift = beta - mean scale. The eval kernel computes scale = gamma / sqrt(var + eps) and
    // shift = beta - mean scale: with var = 1 and eps = 0 its scale is its gamma exactly. So one
    // eval call over the (1, C, 1) "image" invstd (gamma, beta = 0, mean = 0) makes the product
    // gamma invstd, rounded as the train kernel rounds it, and a second over x with that as
    // gamma and the saved mean gives the train forward's y.
    Workspace& ws = g.workspace();
    const Tensor ones = ws.alloc(Shape{s.c}), zeros = ws.alloc(Shape{s.c}), scale = ws.alloc(Shape{s.c});
    fill_value(ones, 1.0f);
    fill_zero(zeros);
    TS_DISPATCH(g.device(), batch_norm_forward_eval, s.invstd, gamma->value.f32(), zeros.f32(), zeros.f32(),
                ones.f32(), scale.f32(), int64_t{1}, s.c, int64_t{1}, 0.0f);
    TS_DISPATCH(g.device(), batch_norm_forward_eval, xv, scale.f32(), beta->value.f32(), s.mean, ones.f32(), y, s.n,
                s.c, s.hw, 0.0f);
    ws.release(scale);
    ws.release(zeros);
    ws.release(ones);
  }
}

void batch_norm_backward(Graph& g, const BatchNormSaved& s, Var* x, Var* gamma, Var* beta, const float* dy) {
  Outputs o;
  outputs(g, x, gamma, beta, s.c, o);
  if (s.train && s.group) {
    sync_batch_norm_backward(g, s, x, gamma, dy, o);
    return;
  }
  float* scratch = partial_sums(g, s.n, s.c, s.hw);
  if (s.train) {
    TS_DISPATCH(g.device(), batch_norm_backward_train, x->value.f32(), dy, gamma->value.f32(), s.mean, s.invstd,
                o.dx, o.dgamma, o.dbeta, s.n, s.c, s.hw, s.eps, o.accumulate, scratch);
  } else {
    TS_DISPATCH(g.device(), batch_norm_backward_eval, x->value.f32(), dy, gamma->value.f32(), s.running_mean.f32(),
                s.running_var.f32(), o.dx, o.dgamma, o.dbeta, s.n, s.c, s.hw, s.eps, o.accumulate, scratch);
  }
}

}  // namespace detail

Var* batch_norm1d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                  const BatchNormOptions& opt) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 2, layer_of(gamma), ": batch_norm1d expects x (N, C), found ", xs.str());
  return batch_norm(g, x, gamma, beta, buf, opt, xs[0], xs[1], 1);
}

Var* batch_norm2d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                  const BatchNormOptions& opt) {
  const Shape& xs = x->value.shape;
  TS_CHECK(xs.ndim == 4, layer_of(gamma), ": batch_norm2d expects x (N, C, H, W), found ", xs.str());
  return batch_norm(g, x, gamma, beta, buf, opt, xs[0], xs[1], xs[2] * xs[3]);
}

}  // namespace tessera::ops
