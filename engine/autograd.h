// Define-by-run reverse-mode autograd.
//
// A Graph is one step's computation. Every op (engine/ops.h) computes its output at once
// with a kernel, and, when gradients are enabled and an input needs one, appends a Node to
// the tape holding a closure that knows how to push the output's gradient to its inputs.
// backward(loss) seeds d(loss) = 1 and runs the closures in reverse order.
//
// Gradients accumulate: every backward kernel adds (+=) into its input's gradient buffer,
// because one tensor can feed several ops (a residual branch, the two BYOL views) and the
// contributions must sum. Activation gradients are allocated from the workspace on first
// use and zeroed then; parameter gradients live in the model's gradient arena, zeroed once
// per step by the training loop.
//
// Under a NoGradScope (teacher forwards, evaluation) ops record nothing and outputs need no
// gradient, so they cost only their forward.
//
// Memory during backward. An intermediate (a Var from make()) is written by the op that made it
// and read by later ops; on the tape those are nodes recorded after it, so in reverse they run
// before the first node recorded after the Var was made. Once that node has run, nothing on
// the tape reads the Var's value or gradient again, and backward releases both to the
// workspace, where the gradients of earlier layers reuse the space (engine/workspace.h). So the
// backward's peak is the forward's (what the tape holds) plus a few layers of gradients, not
// the forward plus every gradient. After backward, only the loss it started from, leaves
// (inputs, parameters) and Vars passed to keep() still have their memory; an intermediate's
// value reads as undefined and asking for its gradient is an Error that says to keep() it.
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "engine/workspace.h"

namespace tessera {
namespace dist {
class Communicator;
}

// A diagnostic's view of the tape (--nonfinite-check ops: engine/nonfinite.h). While one is
// installed (TapeObserverScope), every Graph of this thread tells it, in execution order, what
// each recorded op wrote: after the forward, the op's f32 outputs; after its backward node, the
// gradients of the op's inputs, which the node has just added to. `node` is the op's place on
// the tape (the same forward and backward). The tensors are on the graph's device; nothing is
// synchronised.
class TapeObserver {
 public:
  virtual ~TapeObserver() = default;
  virtual void op_done(size_t node, const char* op, const char* layer, bool backward,
                       const std::vector<Tensor>& written) = 0;
};

// RAII: installs `observer` for the graphs of this thread (the previous one is restored on exit).
// A scope rather than a Graph member so the programs' graphs need no plumbing for a diagnostic.
class TapeObserverScope {
 public:
  explicit TapeObserverScope(TapeObserver* observer);
  ~TapeObserverScope();
  TapeObserverScope(const TapeObserverScope&) = delete;
  TapeObserverScope& operator=(const TapeObserverScope&) = delete;

 private:
  TapeObserver* saved_;
};

struct Var {
  Tensor value;
  Tensor grad;                 // undefined until needed
  bool requires_grad = false;
  const char* name = "";       // layer name for profiles and errors ("layer1.0.conv1")
  // Memory bookkeeping (the header says why): blocks this Var owns in the workspace, whether
  // backward may release them, and whether it has.
  bool owns_value = false, owns_grad = false, keep = false, released = false;
  // The op that made this Var does not read its value in the backward, so an in-place op may
  // overwrite it (set by conv2d, linear, batch_norm and add; ops::relu_ and ops::add_).
  bool overwritable = false;
};

class Graph {
 public:
  explicit Graph(Workspace& ws);
  ~Graph();  // adds the batch counts still pending (see count_batch)
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  Device device() const { return ws_.device(); }
  Workspace& workspace() { return ws_; }
  bool grad_enabled() const { return grad_enabled_; }

  // Leaves. A parameter's gradient buffer is given (a slot of the gradient arena).
  Var* param(const Tensor& value, const Tensor& grad, const char* name = "");
  Var* input(const Tensor& value, const char* name = "");
  // A new intermediate from the workspace; it needs a gradient when any of `from` does and
  // gradients are enabled.
  Var* make(Shape shape, std::initializer_list<const Var*> from, DType dtype = DType::F32);

  // An in-place op's output: a new Var that takes over x's memory (x's value is undefined from
  // here on; its gradient stays its own). Needs a gradient as make() says.
  Var* take_over(Var* x, std::initializer_list<const Var*> from);

  // The gradient buffer of v, allocated from the workspace and zeroed on first use. An Error
  // for an intermediate that backward has released (keep() it to read it afterwards).
  Tensor grad(Var* v);
  // For a backward kernel that can either add into its output or overwrite it: v's gradient
  // buffer, and *accumulate = whether the kernel must add (the buffer holds earlier
  // contributions). On first use the buffer is allocated but not zeroed (*accumulate = false),
  // and the kernel must write every element: the zero fill grad() would do is the one pass over
  // the tensor this saves (6% of a FixMatch step on the CPU, bench/RESULTS.md).
  Tensor grad_to_write(Var* v, bool* accumulate);
  // For a backward whose input's gradient is its output's unchanged (add): where x has no gradient
  // yet and y's is a workspace block that nothing reads after the running node (y is released
  // once it has run and is not kept), x takes over y's gradient buffer instead of a copy of it.
  // Returns whether it did; if not, the caller copies or adds as usual. Saves one pass over the
  // tensor per residual add (a copy of dy: 3.4 ms of a 260 ms FixMatch step on the CPU,
  // bench/RESULTS.md).
  bool take_over_grad(Var* x, Var* y);
  // v's value and gradient stay valid after backward (to read an intermediate's gradient).
  void keep(Var* v) { v->keep = true; }

  // Appends a backward closure. Ops call this only when their output requires_grad.
  // The backward kernels are labelled in profiles by the current profile::LayerScope, or by
  // `layer` when there is none.
  void record(const char* op, const char* layer, std::function<void()> backward);

  // Runs the tape in reverse from a scalar loss (shape (1)). Then the tape is cleared.
  void backward(Var* loss);
  // The same from any output with a given seed gradient d(out) (gradient checks use it); the
  // seed adds to any gradient out's buffer already holds.
  void backward(Var* out, const Tensor& seed);

  // Drops the tape and the Vars (start of a step; the caller resets the workspace).
  void clear();

  // A BatchNorm layer ran in train mode: its num_batches_tracked (a (1) tensor on this
  // graph's device) gains one. The counts are added with one launch for all layers when the
  // graph next runs backward, is cleared or is destroyed - once a step, where one launch per
  // layer and forward used to be (80 one-thread launches in a ResNet-18 BYOL step). Read a
  // counter after one of those.
  void count_batch(const Tensor& counter);

  // SyncBN (engine/distributed.h): train-mode batch norms of this graph take their statistics
  // over the global batch of `group`'s ranks. Null (the default) or one rank: each process
  // normalises its own batch.
  void set_batch_norm_group(dist::Communicator* group) { bn_group_ = group; }
  dist::Communicator* batch_norm_group() const { return bn_group_; }
  size_t tape_size() const { return tape_.size(); }

 private:
  friend class NoGradScope;
  void run_tape();  // the closures in reverse, each under its node's layer label
  void add_batch_counts();
  struct Node {
    const char* op;
    const char* layer;
    std::function<void()> backward;
    std::vector<Var*> made;  // Vars made since the node before: released once this node has run
    std::vector<Var*> inputs;  // the op's inputs that need a gradient (kept only for a TapeObserver)
  };
  void note_inputs(std::initializer_list<const Var*> from);
  void release(Var* v);
  Workspace& ws_;
  std::deque<Var> vars_;  // deque: pointers stay valid as it grows
  std::vector<Var*> made_since_record_;
  std::vector<Var*> inputs_since_record_;  // with a TapeObserver: inputs of the ops since the last record
  std::vector<Node> tape_;
  const Node* running_ = nullptr;  // the node whose backward runs now (run_tape)
  bool grad_enabled_ = true;
  dist::Communicator* bn_group_ = nullptr;
  std::vector<std::pair<float*, float>> batch_counts_;  // counter, forwards since the last add
};

// RAII: gradients off in this scope for one graph (restored on exit).
class NoGradScope {
 public:
  explicit NoGradScope(Graph& g) : g_(g), saved_(g.grad_enabled_) { g_.grad_enabled_ = false; }
  ~NoGradScope() { g_.grad_enabled_ = saved_; }
  NoGradScope(const NoGradScope&) = delete;
  NoGradScope& operator=(const NoGradScope&) = delete;

 private:
  Graph& g_;
  bool saved_;
};

}  // namespace tessera
