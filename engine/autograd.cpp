#include "engine/autograd.h"

#include <algorithm>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/profile.h"
#include "kernels/batch_norm.h"
#include "kernels/elementwise.h"

namespace tessera {

namespace {
thread_local TapeObserver* t_observer = nullptr;
}

TapeObserverScope::TapeObserverScope(TapeObserver* observer) : saved_(t_observer) { t_observer = observer; }
TapeObserverScope::~TapeObserverScope() { t_observer = saved_; }

Graph::Graph(Workspace& ws) : ws_(ws) {}

void Graph::note_inputs(std::initializer_list<const Var*> from) {
  for (const Var* v : from)
    if (v && v->requires_grad &&
        std::find(inputs_since_record_.begin(), inputs_since_record_.end(), v) == inputs_since_record_.end())
      inputs_since_record_.push_back(const_cast<Var*>(v));
}

Graph::~Graph() {
  try {
    add_batch_counts();
  } catch (...) {  // a destructor must not throw; a failing device reports at its next call
  }
}

void Graph::count_batch(const Tensor& counter) {
  TS_CHECK(counter.numel() == 1 && counter.dtype == DType::F32 && counter.device == device(),
           "count_batch: expected an f32 (1) counter on ", device_name(device()), ", found ", counter.str());
  float* p = counter.f32();
  for (auto& c : batch_counts_)
    if (c.first == p) {
      c.second += 1.0f;
      return;
    }
  batch_counts_.emplace_back(p, 1.0f);
}

void Graph::add_batch_counts() {
  for (size_t i = 0; i < batch_counts_.size(); i += kernels::BatchCounters::kMax) {
    kernels::BatchCounters c{};
    for (size_t j = i; j < batch_counts_.size() && c.count < kernels::BatchCounters::kMax; ++j, ++c.count) {
      c.counter[c.count] = batch_counts_[j].first;
      c.add[c.count] = batch_counts_[j].second;
    }
    TS_DISPATCH(device(), batch_norm_count_batches, c);
  }
  batch_counts_.clear();
}

Var* Graph::param(const Tensor& value, const Tensor& grad, const char* name) {
  TS_CHECK(value.device == device(), "parameter '", name, "' is on ", device_name(value.device),
           ", the graph on ", device_name(device()));
  vars_.push_back(Var{value, grad, grad.defined(), name});
  return &vars_.back();
}

Var* Graph::input(const Tensor& value, const char* name) {
  TS_CHECK(value.device == device(), "input '", name, "' is on ", device_name(value.device),
           ", the graph on ", device_name(device()));
  vars_.push_back(Var{value, Tensor(), false, name});
  return &vars_.back();
}

Var* Graph::make(Shape shape, std::initializer_list<const Var*> from, DType dtype) {
  bool needs = false;
  if (grad_enabled_)
    for (const Var* v : from) needs = needs || (v && v->requires_grad);
  vars_.push_back(Var{ws_.alloc(shape, dtype), Tensor(), needs, ""});
  Var* v = &vars_.back();
  v->owns_value = true;
  made_since_record_.push_back(v);
  if (t_observer && needs) note_inputs(from);
  return v;
}

Var* Graph::take_over(Var* x, std::initializer_list<const Var*> from) {
  TS_CHECK(x->owns_value && x->value.defined(), "take_over: expected an intermediate that owns its memory, found ",
           x->name[0] ? x->name : "a Var", " that does not");
  bool needs = false;
  if (grad_enabled_)
    for (const Var* v : from) needs = needs || (v && v->requires_grad);
  vars_.push_back(Var{x->value, Tensor(), needs, ""});
  Var* v = &vars_.back();
  v->owns_value = true;
  x->owns_value = false;
  x->value.ptr = nullptr;  // the shape stays: x's gradient is still allocated from it
  made_since_record_.push_back(v);
  if (t_observer && needs) note_inputs(from);
  return v;
}

Tensor Graph::grad(Var* v) {
  bool accumulate = true;
  const Tensor t = grad_to_write(v, &accumulate);
  if (!accumulate) fill_zero(t);
  return t;
}

Tensor Graph::grad_to_write(Var* v, bool* accumulate) {
  TS_CHECK(!v->released, "the gradient of an intermediate", v->name[0] ? cat(" (", v->name, ")") : std::string(),
           " was asked for after backward released it: expected Graph::keep(v) before backward, found none");
  *accumulate = v->grad.defined();
  if (!*accumulate) {
    v->grad = ws_.alloc(v->value.shape, DType::F32);
    v->owns_grad = true;
  }
  return v->grad;
}

bool Graph::take_over_grad(Var* x, Var* y) {
  if (!running_ || x->grad.defined() || x->released || !y->owns_grad || y->keep || y->released) return false;
  if (!(x->value.shape == y->grad.shape)) return false;
  if (std::find(running_->made.begin(), running_->made.end(), y) == running_->made.end()) return false;
  x->grad = y->grad;
  x->owns_grad = true;
  y->grad = Tensor();
  y->owns_grad = false;
  return true;
}

void Graph::release(Var* v) {
  if (v->keep || v->released) return;
  if (v->owns_grad) ws_.release(v->grad);
  if (v->owns_value) ws_.release(v->value);
  v->owns_grad = v->owns_value = false;
  v->grad = Tensor();
  v->value.ptr = nullptr;
  v->released = true;
}

void Graph::record(const char* op, const char* layer, std::function<void()> backward) {
  // The backward kernels are profiled under the label the forward ran under (a LayerScope
  // of the model or the op); the op's own name for the layer is the fallback.
  const char* scope = profile::current_layer();
  if (scope[0] != '\0' || layer == nullptr) layer = scope;
  if (t_observer) {  // the op's outputs are computed (ops record after their forward)
    std::vector<Tensor> outputs;
    for (const Var* v : made_since_record_)
      if (v->requires_grad && v->value.ptr && v->value.dtype == DType::F32) outputs.push_back(v->value);
    t_observer->op_done(tape_.size(), op, layer, false, outputs);
  }
  tape_.push_back(Node{op, layer, std::move(backward), std::move(made_since_record_), std::move(inputs_since_record_)});
  made_since_record_.clear();
  inputs_since_record_.clear();
}

void Graph::run_tape() {
  add_batch_counts();  // the forwards are done: one launch for the step's batch counts
  for (auto it = tape_.rbegin(); it != tape_.rend(); ++it) {
    {
      profile::LayerScope layer(it->layer);
      running_ = &*it;
      it->backward();
      running_ = nullptr;
    }
    if (t_observer) {
      std::vector<Tensor> grads;
      for (const Var* v : it->inputs)
        if (v->grad.defined()) grads.push_back(v->grad);
      t_observer->op_done(static_cast<size_t>(tape_.rend() - it) - 1, it->op, it->layer, true, grads);
    }
    for (Var* v : it->made) release(v);  // nothing left on the tape reads them (see the header)
  }
  tape_.clear();
}

void Graph::backward(Var* loss) {
  TS_CHECK(loss->value.numel() == 1, "backward needs a scalar loss, found shape ", loss->value.shape.str());
  TS_CHECK(loss->requires_grad, "backward: the loss does not depend on anything that needs a gradient");
  fill_value(grad(loss), 1.0f);
  keep(loss);
  run_tape();
}

void Graph::backward(Var* out, const Tensor& seed) {
  check_same_shape("backward seed", out->value, seed);
  // The seed adds to what out's buffer holds: out can be a view (flatten) of a parameter
  // whose gradient already has contributions, as PyTorch's out.backward(seed) adds to .grad.
  bool accumulate = false;
  const Tensor d_out = grad_to_write(out, &accumulate);
  if (accumulate) TS_DISPATCH(device(), scale_accumulate, seed.f32(), d_out.f32(), seed.numel(), 1.0f);
  else copy(d_out, seed);
  keep(out);
  run_tape();
}

void Graph::clear() {
  add_batch_counts();
  running_ = nullptr;  // set still if a backward threw
  tape_.clear();
  vars_.clear();
  made_since_record_.clear();
  inputs_since_record_.clear();
}

}  // namespace tessera
