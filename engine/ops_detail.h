// The halves of conv2d and batch_norm without the tape: shape checks, the forward on the
// graph's device and CPU tier, and the backward on raw gradient pointers. The ops themselves
// (engine/ops_conv.cpp, engine/ops_norm.cpp) are these plus one tape node each; the fused
// op (engine/ops_fused.cpp) records one node around all of them, so it runs the very kernels,
// tiers and scratch rules the unfused ops run. Not part of the ops' interface (engine/ops.h).
#pragma once

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/conv.h"

namespace tessera {
namespace dist {
class Communicator;
}

namespace ops::detail {

// ---- conv2d (engine/ops_conv.cpp) ----------------------------------------------------------

// conv2d's checks, with messages naming `layer`: x (N, C, H, W), w (O, C, KH, KW), b (O) or
// nullptr, all on one device -> the kernels' shape.
kernels::Conv2dShape conv2d_shape(const char* layer, const Tensor& x, const Var* w, const Var* b, int stride,
                                  int pad);
// y = conv(x, w) + b, scratch from the workspace's region.  x (N, C, H, W), y (N, O, HO, WO)
void conv2d_forward(Graph& g, const kernels::Conv2dShape& s, const float* x, const Var* w, const Var* b, float* y);
// Adds into dx (nullptr: not wanted), or writes it when !accumulate_dx (a new gradient: no zero
// fill first), and adds into the gradients of w and b where they need one.
// dy (N, O, HO, WO) is the output's gradient.
void conv2d_backward(Graph& g, const kernels::Conv2dShape& s, const float* x, Var* w, Var* b, const float* dy,
                     float* dx, bool accumulate_dx);

// ---- batch_norm (engine/ops_norm.cpp) ------------------------------------------------------

// What a batch_norm's backward needs besides x, gamma, beta and dy: the statistics it
// normalised with. Train mode: the batch mean and inverse std the forward saved (workspace,
// until reset); SyncBN also the global variance and count; eval mode: the running statistics.
struct BatchNormSaved {
  int64_t n = 0, c = 0, hw = 0;  // x viewed as (N, C, HW)
  float eps = 0;
  bool train = false;
  float* mean = nullptr;    // train: (C)
  float* invstd = nullptr;  // train: (C)
  float* var = nullptr;     // SyncBN: (C), the global batch's biased variance
  double count = 0;         // SyncBN: N HW over all ranks
  dist::Communicator* group = nullptr;  // SyncBN: the ranks; null otherwise
  Tensor running_mean, running_var;     // eval
};

// batch_norm's checks and forward into y (x's shape), x viewed as (N, C, HW): in train mode the
// running statistics are updated and the batch counted (Graph::count_batch).
BatchNormSaved batch_norm_forward(Graph& g, const char* layer, Var* x, Var* gamma, Var* beta,
                                  const BatchNormBuffers& buf, const BatchNormOptions& opt, int64_t n, int64_t c,
                                  int64_t hw, float* y);
// y again, as batch_norm_forward wrote it, from x and the saved statistics; the running
// statistics are not touched. Bit for bit on the CPU; on CUDA the train mode's y comes from
// cuDNN's inference call this time, which may round differently from its training call.
void batch_norm_forward_again(Graph& g, const BatchNormSaved& s, const Var* x, const Var* gamma, const Var* beta,
                              float* y);
// The gradients of x, gamma and beta, where they need one, from dy (x's shape).
void batch_norm_backward(Graph& g, const BatchNormSaved& s, Var* x, Var* gamma, Var* beta, const float* dy);

}  // namespace ops::detail
}  // namespace tessera
