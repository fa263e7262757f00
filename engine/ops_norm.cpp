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
#include "kernels/batch_norm.h"
#include "kernels/sync_batch_norm.h"

namespace tessera::ops {
namespace {

const char* layer_of(const Var* v) { return v->name && v->name[0] ? v->name : "batch_norm"; }

// The backward's three outputs: the gradient where the input needs one (added into), else
// workspace memory (overwritten, never read), handed back when the kernel has run.
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
  o.dx = x->requires_grad ? g.grad(x).f32() : unwanted(x->value.shape);
  o.dgamma = gamma->requires_grad ? g.grad(gamma).f32() : unwanted(Shape{c});
  o.dbeta = beta->requires_grad ? g.grad(beta).f32() : unwanted(Shape{c});
  o.accumulate = (x->requires_grad ? kernels::kBnAccumulateDx : 0u) |
                 (gamma->requires_grad ? kernels::kBnAccumulateDgamma : 0u) |
                 (beta->requires_grad ? kernels::kBnAccumulateDbeta : 0u);
}

// SyncBN's train mode (kernels/sync_batch_norm.h): x (N, C, HW) is this rank's shard; the
// statistics are those of the global batch, one all-reduce of 2C doubles each way.
void sync_batch_norm_train(Graph& g, Var* x, Var* gamma, Var* beta, Var* y, const BatchNormBuffers& buf,
                           const BatchNormOptions& opt, int64_t n, int64_t c, int64_t hw, dist::Communicator& group) {
  Workspace& ws = g.workspace();
  // Doubles (2, C) as 4C floats of workspace (each allocation is 256-byte aligned).
  auto doubles = [&](int64_t count) { return reinterpret_cast<double*>(ws.alloc(Shape{2 * count}).f32()); };
  double* sums = doubles(2 * c);
  float* mean = ws.alloc(Shape{c}).f32();
  float* var = ws.alloc(Shape{c}).f32();
  float* invstd = ws.alloc(Shape{c}).f32();
  // Shifted by the running mean (identical on every rank): see kernels/sync_batch_norm.h.
  TS_DISPATCH(g.device(), batch_norm_sums, x->value.f32(), buf.running_mean.f32(), sums, n, c, hw);
  group.all_reduce_sum(sums, 2 * c, g.device(), "SyncBN forward statistics");
  // Every rank's shard has the same N HW (the sampler splits the global batch evenly).
  const double count = static_cast<double>(n * hw) * group.size();
  TS_DISPATCH(g.device(), batch_norm_sync_stats, sums, count, mean, var, invstd, buf.running_mean.f32(),
              buf.running_var.f32(), c, opt.momentum, opt.eps);
  TS_DISPATCH(g.device(), batch_norm_forward_eval, x->value.f32(), gamma->value.f32(), beta->value.f32(), mean, var,
              y->value.f32(), n, c, hw, opt.eps);
  g.count_batch(buf.num_batches);
  if (!y->requires_grad) return;
  g.record("batch_norm", layer_of(gamma), [&g, x, gamma, beta, y, mean, invstd, n, c, hw, count, &group] {
    Outputs o;
    outputs(g, x, gamma, beta, c, o);
    Workspace& w = g.workspace();
    double* local = reinterpret_cast<double*>(w.alloc(Shape{4 * c}).f32());
    double* global = reinterpret_cast<double*>(w.alloc(Shape{4 * c}).f32());
    TS_DISPATCH(g.device(), batch_norm_backward_sums, x->value.f32(), g.grad(y).f32(), mean, invstd, local, global, n,
                c, hw);
    group.all_reduce_sum(global, 2 * c, g.device(), "SyncBN backward sums");
    TS_DISPATCH(g.device(), batch_norm_backward_apply, x->value.f32(), g.grad(y).f32(), gamma->value.f32(), mean,
                invstd, local, global, count, o.dx, o.dgamma, o.dbeta, n, c, hw, o.accumulate);
    w.release(reinterpret_cast<float*>(global));
    w.release(reinterpret_cast<float*>(local));
  });
}

// x viewed as (N, C, HW).
Var* batch_norm(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf, const BatchNormOptions& opt,
                int64_t n, int64_t c, int64_t hw) {
  const char* layer = layer_of(gamma);
  profile::LayerScope profile_layer(layer, profile::LayerScope::kRefine);  // names the kernels
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

  Var* y = g.make(x->value.shape, {x, gamma, beta});
  y->overwritable = true;  // the backward reads x and the saved statistics, never y
  const float eps = opt.eps;
  dist::Communicator* group = g.batch_norm_group();
  if (opt.train && group && group->size() > 1) {
    sync_batch_norm_train(g, x, gamma, beta, y, buf, opt, n, c, hw, *group);
  } else if (opt.train) {
    // Batch mean and inverse std for the backward: two workspace allocations, each aligned
    // (256 bytes) as cuDNN's resultSaveMean / resultSaveInvVariance expect; one (2, C) block
    // would put the inverse std at an offset of C floats.
    float* save_mean = g.workspace().alloc(Shape{c}).f32();
    float* save_invstd = g.workspace().alloc(Shape{c}).f32();
    TS_DISPATCH(g.device(), batch_norm_forward_train, x->value.f32(), gamma->value.f32(), beta->value.f32(),
                y->value.f32(), buf.running_mean.f32(), buf.running_var.f32(), save_mean, save_invstd, n, c, hw,
                opt.momentum, eps);
    g.count_batch(buf.num_batches);
    if (y->requires_grad) {
      g.record("batch_norm", layer, [&g, x, gamma, beta, y, save_mean, save_invstd, n, c, hw, eps] {
        Outputs o;
        outputs(g, x, gamma, beta, c, o);
        TS_DISPATCH(g.device(), batch_norm_backward_train, x->value.f32(), g.grad(y).f32(), gamma->value.f32(),
                    save_mean, save_invstd, o.dx, o.dgamma, o.dbeta, n, c, hw, eps, o.accumulate);
      });
    }
  } else {
    const Tensor mean = buf.running_mean, var = buf.running_var;
    TS_DISPATCH(g.device(), batch_norm_forward_eval, x->value.f32(), gamma->value.f32(), beta->value.f32(),
                mean.f32(), var.f32(), y->value.f32(), n, c, hw, eps);
    if (y->requires_grad) {
      g.record("batch_norm", layer, [&g, x, gamma, beta, y, mean, var, n, c, hw, eps] {
        Outputs o;
        outputs(g, x, gamma, beta, c, o);
        const int64_t scratch_floats = kernels::batch_norm_backward_eval_scratch(n, c, hw);
        float* scratch = static_cast<float*>(g.workspace().scratch(size_t(scratch_floats) * sizeof(float)));
        TS_DISPATCH(g.device(), batch_norm_backward_eval, x->value.f32(), g.grad(y).f32(), gamma->value.f32(),
                    mean.f32(), var.f32(), o.dx, o.dgamma, o.dbeta, n, c, hw, eps, o.accumulate, scratch);
      });
    }
  }
  return y;
}

}  // namespace

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
