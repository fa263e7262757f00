// The engine's differentiable ops. Each takes its inputs as Vars of one Graph, computes the
// forward with a kernel on the inputs' device (kernels/*.h), and records its backward on the
// tape when the output needs a gradient. Shapes are checked here, in the launcher, with
// messages that name both shapes; kernels assume valid input.
//
// Conventions: images are NCHW float32; labels are int32; a "loss" is a Var of shape (1).
// `layer` names the module for profiles ("layer1.0.conv1"); ops take it from Var::name of
// the weight where there is one.
#pragma once

#include "engine/autograd.h"
#include "engine/tensor.h"

namespace tessera::ops {

// ---- element-wise and linear (engine/ops_basic.cpp) ----------------------------------

// y = x w^T + b.  x (N, IN), w (OUT, IN), b (OUT) or nullptr -> y (N, OUT)
Var* linear(Graph& g, Var* x, Var* w, Var* b);
// y = a + b, same shape (residual connections)
Var* add(Graph& g, Var* a, Var* b);
// In-place forms (PyTorch's relu_ / add_): y takes over the input's memory (x, or a), which
// must not be read again; its value is undefined from here on (engine/autograd.h). Only where
// the op that made the input does not read it in its backward (conv2d, linear, batch_norm, add:
// Var::overwritable) and it is the graph's own; otherwise they compute out of place. They save
// one activation per use for the whole step (ARCHITECTURE-NOTES.md, "Step memory").
Var* add_(Graph& g, Var* a, Var* b);
Var* relu_(Graph& g, Var* x);
Var* leaky_relu_(Graph& g, Var* x, float slope);
// y = s * x
Var* scale(Graph& g, Var* x, float s);
Var* relu(Graph& g, Var* x);
Var* leaky_relu(Graph& g, Var* x, float slope);  // slope >= 0
// (N, C, H, W) or (N, D) -> (N, C*H*W); a view, no copy
Var* flatten(Graph& g, Var* x);
// scalar reductions -> (1)
Var* sum(Graph& g, Var* x);
Var* mean(Graph& g, Var* x);

// ---- normalisation (engine/ops_norm.cpp) ------------------------------------------------

// Running statistics of one BatchNorm layer: slots of the model's buffer arena.
struct BatchNormBuffers {
  Tensor running_mean;  // (C)
  Tensor running_var;   // (C), unbiased batch variance folded in, as PyTorch does
  Tensor num_batches;   // (1), +1 per train-mode forward, added by the graph (Graph::count_batch)
};
struct BatchNormOptions {
  bool train = true;       // batch statistics + running update; false: running statistics
  float momentum = 0.1f;   // PyTorch convention: running = (1 - momentum) running + momentum batch
  float eps = 1e-5f;
};
// x (N, C) -> (N, C); gamma, beta (C)
Var* batch_norm1d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                  const BatchNormOptions& opt);
// x (N, C, H, W) -> (N, C, H, W); statistics over N, H, W
Var* batch_norm2d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                  const BatchNormOptions& opt);
// Row-wise y_i = x_i / max(||x_i||, eps).  x (N, D) -> (N, D). Launcher in engine/ops_loss.cpp.
Var* l2_normalize(Graph& g, Var* x, float eps = 1e-12f);

// ---- losses (engine/ops_loss.cpp) -----------------------------------------------------

// BYOL regression loss: mean over rows of 2 - 2 cos(p_i, z_i).  p, z (N, D) -> (1).
// Gradients flow to whichever input requires one (the teacher's z never does).
Var* byol_loss(Graph& g, Var* p, Var* z);
// Mean softmax cross-entropy with hard labels.  logits (N, K), labels (N) int32 -> (1)
Var* cross_entropy(Graph& g, Var* logits, const Tensor& labels);
// Mean cross-entropy against soft targets (rows summing to 1).  targets (N, K) -> (1)
Var* cross_entropy_soft(Graph& g, Var* logits, const Tensor& targets);
// FixMatch's unlabeled loss: (1/N) sum_i weight_i * CE(logits_i, labels_i).
// labels (N) int32, weight (N) float (the confidence mask) -> (1)
Var* cross_entropy_weighted(Graph& g, Var* logits, const Tensor& labels, const Tensor& weight);

// No-grad: argmax (N) int32 and max softmax probability (N) of each row of logits (N, K).
void argmax_max_prob(const Tensor& logits, const Tensor& argmax, const Tensor& max_prob);

// ---- convolution and pooling (engine/ops_conv.cpp) ----------------------------------------

// x (N, C, H, W), w (O, C, KH, KW), b (O) or nullptr -> (N, O, HO, WO),
// HO = (H + 2 pad - KH) / stride + 1
Var* conv2d(Graph& g, Var* x, Var* w, Var* b, int stride, int pad);
// (N, C, H, W) -> (N, C, HO, WO); padding never wins the max
Var* max_pool2d(Graph& g, Var* x, int kernel = 3, int stride = 2, int pad = 1);
// (N, C, H, W) -> (N, C)
Var* global_avg_pool(Graph& g, Var* x);

// ---- fused (engine/ops_fused.cpp) ----------------------------------------------------------

// conv2d(leaky_relu_(batch_norm2d(x, gamma, beta, buf, opt), slope), w, b, stride, pad): the
// same output, gradients and running-statistics update as those three ops (on the CPU bit for
// bit; on CUDA to float rounding), without keeping z = leaky_relu(batch_norm(x)) for the step:
// the backward makes z again from x and BatchNorm's saved statistics. For a BatchNorm + ReLU
// output that nothing but this convolution reads (inside a residual block); saves one
// activation per use for one memory-bound pass in the backward (ARCHITECTURE-NOTES.md,
// "Step memory"). slope >= 0 (0: relu).  x (N, C, H, W) -> (N, O, HO, WO)
Var* batch_norm_relu_conv2d(Graph& g, Var* x, Var* gamma, Var* beta, const BatchNormBuffers& buf,
                            const BatchNormOptions& opt, float slope, Var* w, Var* b, int stride, int pad);

// ---- contrastive (engine/ops_contrastive.cpp) -------------------------------------------

// MoCo's InfoNCE: logits_i = [q_i . k_i, q_i . queue_0, ..., q_i . queue_{K-1}] / temperature
// (the positive at index 0), loss = mean_i cross-entropy(logits_i, 0).  q (N, D) -> (1); the
// gradient reaches q only: k (N, D) and queue (K, D) are constants, read again by backward().
// accuracy: when defined, an f32 (1) tensor that receives the fraction of rows whose positive
// logit is the row's first maximum (InfoNCE top-1).
Var* infonce_loss(Graph& g, Var* q, const Tensor& k, const Tensor& queue, float temperature,
                  const Tensor& accuracy = Tensor());
// No-grad: keys (N, D) into rows ptr .. ptr + N - 1 of the ring queue (K, D), on its device,
// then ptr <- (ptr + N) mod K, where ptr is an i32 (1) tensor on the queue's device (its value
// is never read on the host: no sync). N must divide K (an Error says so otherwise); ptr must
// hold a multiple of N below K. `skip`: a device flag (kernels/nonfinite.h) that, when
// non-zero, leaves the rows and the pointer as they are: a skipped step changes nothing.
void queue_enqueue(const Tensor& queue, const Tensor& keys, const Tensor& ptr, const int32_t* skip = nullptr);
// The same with the pointer on the host: returns (ptr + N) mod K, which cannot see a device
// skip flag, so the pointer moves on even when `skip` kept the keys out. Tests use it; a
// training loop wants the form above.
int64_t queue_enqueue(const Tensor& queue, const Tensor& keys, int64_t ptr, const int32_t* skip = nullptr);

}  // namespace tessera::ops
