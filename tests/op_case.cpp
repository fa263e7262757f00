#include "tests/op_case.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <omp.h>

#include "engine/check.h"
#include "engine/device.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"

namespace tessera::testing {

std::vector<OpCase>& op_cases() {
  static std::vector<OpCase> cases;
  return cases;
}

OpCaseRegistrar::OpCaseRegistrar(std::vector<OpCase> (*make)()) {
  for (OpCase& c : make()) op_cases().push_back(std::move(c));
}

bool cuda_testable(std::string* reason) {
  std::string why = cuda_unavailable_reason();
  if (!why.empty()) {
    if (reason) *reason = why;
    return false;
  }
  init_cuda();
  // Every CUDA comparison runs in strict FP32: TF32 (the programs' default for convolutions)
  // would put results ~1e-3 from the CPU reference. Set here, before each GPU test, because
  // a program run in this process (tests/cuda_runs_test.cpp) applies its own --math.
  CudaOptions pinned = cuda_options();
  pinned.math = MathMode::Fp32;
  set_cuda_options(pinned);
  return true;
}

Tensor CaseContext::buffer(Shape s, float value) {
  Tensor t = g.workspace().alloc(s);
  fill_value(t, value);
  extra_outputs.push_back(t);
  return t;
}

InputSpec noisy_copy(const Shape& shape, int source, float scale, float noise, bool grad) {
  InputSpec s{shape, InputSpec::NoisyCopy, grad, -noise, noise};
  s.source = source;
  s.source_scale = scale;
  return s;
}

namespace {

// Host copies of a case's inputs, drawn from the test Philox stream keyed by the case name.
struct HostInputs {
  std::vector<std::vector<float>> f32;   // for Uniform / SoftTargets / Mask
  std::vector<std::vector<int32_t>> i32; // for Labels
};

uint64_t name_seed(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char ch : s) h = (h ^ static_cast<uint8_t>(ch)) * 1099511628211ull;
  return h;
}

HostInputs make_inputs(const OpCase& c) {
  HostInputs h;
  const uint64_t seed = name_seed(c.name);
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const InputSpec& s = c.inputs[k];
    const size_t n = static_cast<size_t>(s.shape.numel());
    kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, k), 0);
    std::vector<float> f(n);
    std::vector<int32_t> l;
    switch (s.fill) {
      case InputSpec::Uniform:
        for (float& v : f) v = s.lo + (s.hi - s.lo) * (1.0f - rng.uniform());
        break;
      case InputSpec::Mask:
        for (float& v : f) v = rng.uniform() < 0.5f ? 1.0f : 0.0f;
        break;
      case InputSpec::SoftTargets: {
        const size_t k_dim = static_cast<size_t>(s.shape[s.shape.ndim - 1]);
        for (size_t r = 0; r < n / k_dim; ++r) {
          float total = 0;
          for (size_t j = 0; j < k_dim; ++j) total += (f[r * k_dim + j] = rng.uniform());
          for (size_t j = 0; j < k_dim; ++j) f[r * k_dim + j] /= total;
        }
        break;
      }
      case InputSpec::NoisyCopy: {
        const size_t src = static_cast<size_t>(s.source);
        TS_CHECK(s.source >= 0 && src < k && c.inputs[src].fill != InputSpec::Labels &&
                     c.inputs[src].shape == s.shape,
                 "case ", c.name, ": input ", k, " copies input ", s.source,
                 ", which must be an earlier f32 input of the same shape");
        for (size_t i = 0; i < n; ++i)
          f[i] = s.source_scale * h.f32[src][i] + s.lo + (s.hi - s.lo) * (1.0f - rng.uniform());
        break;
      }
      case InputSpec::Labels:
        TS_CHECK(s.classes > 0, "case ", c.name, ": a Labels input needs classes");
        l.resize(n);
        for (int32_t& v : l) v = static_cast<int32_t>(rng.next_u32() % static_cast<uint32_t>(s.classes));
        break;
    }
    h.f32.push_back(std::move(f));
    h.i32.push_back(std::move(l));
  }
  return h;
}

// One run of a case on one device: inputs uploaded, forward, optional backward from `seed`.
struct Run {
  std::unique_ptr<Workspace> ws;
  std::unique_ptr<Graph> g;
  std::vector<OwnedTensor> values, grads;  // grads: the parameter buffers (GradInto::*Param)
  std::vector<Var*> in;                    // the inputs as the case's build saw them
  OwnedTensor anchor_value, anchor_grad;   // GradInto::Intermediate: see build_run
  Var* out = nullptr;
  std::vector<Tensor> extra;
};

// How a run's inputs that take a gradient receive it (op_case.h: the buffer check).
enum class GradInto {
  None,          // no backward: forward only
  ZeroedParam,   // parameters whose gradient buffers start at zero (the reference)
  PriorParam,    // parameters whose buffers hold earlier contributions: the backward must add
  Intermediate,  // intermediates: the first write lands in a fresh, unzeroed buffer
};

std::vector<float> projection(const OpCase& c, const Shape& s);

// Backward from out, seeded with the case's projection direction.
void backward_projected(Run& r, const OpCase& c) {
  OwnedTensor seed(r.ws->device(), r.out->value.shape);
  from_host(seed.t, projection(c, r.out->value.shape));
  r.g->backward(r.out, seed.t);
}

// `priors` (GradInto::PriorParam only): input k's gradient buffer starts at priors[k].
void build_run(Run& r, const OpCase& c, const HostInputs& h, Device dev, GradInto into, bool poison,
               const std::vector<std::vector<float>>* priors = nullptr) {
  const bool with_grad = into != GradInto::None;
  r.ws = std::make_unique<Workspace>(dev, 0);
  if (poison) {
    // Size the workspace with a throw-away run, forward and backward, then fill the block and
    // the scratch region (what a convolution or BatchNorm uses while it runs) with NaN before
    // the real one: memory read before it is written shows up as NaN.
    Run dry;
    build_run(dry, c, h, dev, into, false, priors);
    if (with_grad && dry.out->requires_grad) backward_projected(dry, c);
    r.ws = std::make_unique<Workspace>(dev, dry.ws->high_water() * 2 + 4096);
    r.ws->scratch(dry.ws->scratch_high_water());
    r.ws->reset();  // grows the scratch region to the request above
    r.ws->poison();
  }
  r.g = std::make_unique<Graph>(*r.ws);
  CaseContext ctx{*r.g, {}, {}};
  // Intermediate inputs are made "from" this one-element parameter, so that they need a
  // gradient; no op links the two, so nothing flows back to it.
  Var* anchor = nullptr;
  if (into == GradInto::Intermediate) {
    r.anchor_value = OwnedTensor(dev, Shape{1});
    r.anchor_grad = OwnedTensor(dev, Shape{1});
    fill_zero(r.anchor_value.t);
    fill_zero(r.anchor_grad.t);
    anchor = r.g->param(r.anchor_value.t, r.anchor_grad.t, "anchor");
  }
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const InputSpec& s = c.inputs[k];
    const bool labels = s.fill == InputSpec::Labels;
    r.values.emplace_back(dev, s.shape, labels ? DType::I32 : DType::F32);
    if (labels) from_host(r.values.back().t, h.i32[k]);
    else from_host(r.values.back().t, h.f32[k]);
    r.grads.emplace_back();
    if (!s.grad || !with_grad || labels) {
      ctx.in.push_back(r.g->input(r.values.back().t, "input"));
    } else if (into == GradInto::Intermediate) {
      Var* v = r.g->make(s.shape, {anchor});
      copy(v->value, r.values.back().t);
      r.g->keep(v);  // its gradient is read after backward
      ctx.in.push_back(v);
    } else {
      r.grads.back() = OwnedTensor(dev, s.shape);
      if (into == GradInto::PriorParam) from_host(r.grads.back().t, (*priors)[k]);
      else fill_zero(r.grads.back().t);
      ctx.in.push_back(r.g->param(r.values.back().t, r.grads.back().t, "input"));
    }
  }
  r.in = ctx.in;
  if (!with_grad) {
    NoGradScope no_grad(*r.g);
    r.out = c.build(ctx);
  } else {
    r.out = c.build(ctx);
  }
  r.extra = ctx.extra_outputs;
}

std::vector<float> projection(const OpCase& c, const Shape& s) {
  kernels::PhiloxState rng(name_seed(c.name), kernels::philox_subsequence(kernels::kStreamTest, 99), 0);
  std::vector<float> r(static_cast<size_t>(s.numel()));
  for (float& v : r) v = 2.0f * rng.uniform() - 1.0f;
  return r;
}

double projected(const Tensor& out, const std::vector<float>& r) {
  std::vector<float> o = to_host_f32(out);
  double total = 0;
  for (size_t i = 0; i < o.size(); ++i) total += static_cast<double>(o[i]) * r[i];
  return total;
}

// The elements of input k the gradient check visits (see op_case.h): all of a small input;
// of a large one an even spread plus the label positions of any Labels input it pairs with.
std::vector<size_t> checked_elements(const OpCase& c, const HostInputs& h, size_t k) {
  const Shape& shape = c.inputs[k].shape;
  const size_t n = static_cast<size_t>(shape.numel());
  std::vector<size_t> idx;
  if (n <= static_cast<size_t>(c.full_check_limit)) {
    for (size_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  const size_t m = std::min(n, static_cast<size_t>(c.max_checked));
  for (size_t i = 0; i < m; ++i) idx.push_back(i * n / m);
  for (size_t l = 0; l < c.inputs.size(); ++l) {
    const InputSpec& ls = c.inputs[l];
    if (ls.fill != InputSpec::Labels || shape.ndim != 2 || ls.shape != Shape{shape[0]} || shape[1] != ls.classes)
      continue;
    const size_t classes = static_cast<size_t>(ls.classes);
    for (size_t i = 0; i < h.i32[l].size(); ++i) idx.push_back(i * classes + static_cast<size_t>(h.i32[l][i]));
  }
  std::sort(idx.begin(), idx.end());
  idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
  return idx;
}

// The finite differences run thousands of tiny forwards. At that size OpenMP's fork and join
// cost more than the work, and on a loaded machine a team waiting for a descheduled thread
// is a hundred times slower, so the probes run on one thread. (The analytic gradient under
// test comes from the backward run before, with the configured threads.)
class OneThread {
 public:
  OneThread() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved_); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int saved_;
};

// Compares one input's analytic and numeric gradients (over the checked elements, in the same
// order) by the two rules of op_case.h; returns "" or the report.
std::string compare_gradients(const OpCase& c, size_t k, size_t numel, const std::vector<size_t>& idx,
                              const std::vector<double>& a, const std::vector<double>& n) {
  double diff2 = 0, a2 = 0, n2 = 0, a_inf = 0, n_inf = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff2 += (a[i] - n[i]) * (a[i] - n[i]);
    a2 += a[i] * a[i];
    n2 += n[i] * n[i];
    a_inf = std::max(a_inf, std::fabs(a[i]));
    n_inf = std::max(n_inf, std::fabs(n[i]));
  }
  const std::string where = cat("input ", k, " (", a.size(), " of ", numel, " elements checked): ");
  const double scale = std::max(std::sqrt(a2), std::sqrt(n2));
  // Both zero: the case cannot tell a right backward from one that writes nothing.
  if (scale == 0)
    return where + "analytic and numeric gradients are zero at every checked element: the case checks nothing\n";
  std::string report;
  const double rel = std::sqrt(diff2) / scale;
  if (!(rel <= c.grad_tol))  // written so that NaN fails
    report += cat(where, "||a - n|| / max(||a||, ||n||) = ", rel, " > grad_tol ", c.grad_tol, " (||a|| = ",
                  std::sqrt(a2), ", ||n|| = ", std::sqrt(n2), ")\n");
  const double elem_scale = std::max(a_inf, n_inf);
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(a[i] - n[i]) / elem_scale;
    if (e <= c.elem_tol) continue;
    if (bad++ < 3)
      report += cat(where, "element ", idx[i], ": analytic ", a[i], ", numeric ", n[i], ", |a - n| / max|.| = ", e,
                    " > elem_tol ", c.elem_tol, "\n");
  }
  if (bad > 3) report += cat(where, bad, " elements outside elem_tol in all\n");
  return report;
}

}  // namespace

std::string compare_to_reference(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                                 float tol) {
  if (got.size() != want.size()) return cat(what, ": size ", got.size(), " vs ", want.size(), "\n");
  // Relative to the tensor's largest value, not to 1: a gradient of size 1e-4 (a mean over N,
  // a cross-entropy over K = 1000) would pass any error under an absolute 1e-4, even zero.
  float scale = 0.0f;
  for (float b : want) scale = std::max(scale, std::fabs(b));
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const float a = got[i], b = want[i];
    const bool ok = std::isfinite(a) && std::fabs(a - b) <= tol * scale;
    if (!ok && bad++ == 0) first = cat(what, "[", i, "]: got ", a, ", expected ", b);
  }
  if (bad == 0) return "";
  return cat(first, " (", bad, " of ", got.size(), " elements outside tolerance ", tol, " of the largest |expected| ", scale,
             ")\n");
}

std::vector<float> case_input(const OpCase& c, size_t k) {
  const HostInputs h = make_inputs(c);
  TS_CHECK(k < c.inputs.size(), "case ", c.name, " has no input ", k);
  if (c.inputs[k].fill == InputSpec::Labels) return std::vector<float>(h.i32[k].begin(), h.i32[k].end());
  return h.f32[k];
}

std::vector<size_t> gradient_check_elements(const OpCase& c, size_t k) {
  TS_CHECK(k < c.inputs.size(), "case ", c.name, " has no input ", k);
  return checked_elements(c, make_inputs(c), k);
}

std::string run_gradient_check(const OpCase& c) {
  HostInputs h = make_inputs(c);
  Run base;
  build_run(base, c, h, Device::CPU, GradInto::ZeroedParam, false);
  TS_CHECK(base.out->requires_grad, "case ", c.name, ": the output needs no gradient");
  const std::vector<float> r = projection(c, base.out->value.shape);
  OwnedTensor seed(Device::CPU, base.out->value.shape);
  from_host(seed.t, r);
  base.g->backward(base.out, seed.t);

  OneThread one_thread;
  std::string report;
  int checked = 0;
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const InputSpec& s = c.inputs[k];
    if (!s.grad || s.fill == InputSpec::Labels) continue;
    const std::vector<float> analytic = to_host_f32(base.grads[k].t);
    std::vector<size_t> idx;
    std::vector<double> a, n;
    for (size_t j : checked_elements(c, h, k)) {
      if (std::fabs(h.f32[k][j]) < s.kink) continue;
      const float x = h.f32[k][j];
      // The step actually taken is between the two rounded floats, not exactly 2 eps.
      const float xs[2] = {x + c.eps, x - c.eps};
      double l[2];
      for (int side = 0; side < 2; ++side) {
        h.f32[k][j] = xs[side];
        Run probe;
        build_run(probe, c, h, Device::CPU, GradInto::None, false);
        l[side] = projected(probe.out->value, r);
      }
      h.f32[k][j] = x;
      idx.push_back(j);
      a.push_back(analytic[j]);
      n.push_back((l[0] - l[1]) / (static_cast<double>(xs[0]) - static_cast<double>(xs[1])));
    }
    if (idx.empty()) continue;
    checked += static_cast<int>(idx.size());
    report += compare_gradients(c, k, analytic.size(), idx, a, n);
  }
  if (checked == 0 && report.empty()) report = "no element was checked (every input skipped)\n";
  return report;
}

namespace {

// Input k's gradient after backward, on the host: its parameter buffer, or the intermediate's
// own gradient (zeros if no backward asked for one). Empty for an input that takes none.
std::vector<float> gradient_of(const Run& r, size_t k) {
  const Var* v = r.in[k];
  if (!v->requires_grad) return {};
  if (r.grads[k].t.defined()) return to_host_f32(r.grads[k].t);
  if (v->grad.defined()) return to_host_f32(v->grad);
  return std::vector<float>(static_cast<size_t>(v->value.numel()), 0.0f);
}

// What a run computed, on the host: the output, every input's gradient (empty for inputs that
// take none; see gradient_of) and the extra outputs.
struct Results {
  std::vector<float> out;
  std::vector<std::vector<float>> grads, extra;
};

// Ends the run: the graph is cleared before the extra outputs are read, so that a forward-only
// run's BatchNorm batch counts, pending until then (Graph::count_batch), are in them.
Results results_of(Run& r, const OpCase& c) {
  Results res;
  res.out = to_host_f32(r.out->value);
  for (size_t k = 0; k < c.inputs.size(); ++k) res.grads.push_back(gradient_of(r, k));
  r.g->clear();
  r.out = nullptr;
  for (const Tensor& e : r.extra) res.extra.push_back(to_host_f32(e));
  return res;
}

// A run's output, gradients and extra outputs against the reference's; `what` names the run.
std::string compare_results(const std::string& what, const Results& got, const Results& want, float tol) {
  std::string report = compare_to_reference(cat("output", what).c_str(), got.out, want.out, tol);
  for (size_t k = 0; k < want.grads.size(); ++k)
    if (!want.grads[k].empty())
      report += compare_to_reference(cat("grad of input ", k, what).c_str(), got.grads[k], want.grads[k], tol);
  for (size_t e = 0; e < want.extra.size(); ++e)
    report += compare_to_reference(cat("extra output ", e, what).c_str(), got.extra[e], want.extra[e], tol);
  return report;
}

// The earlier contributions a PriorParam run starts from: uniform in [-m, m), m the input's
// largest |reference gradient| (1 where that is zero). A backward that overwrites instead of
// adding is then off by about the gradient's own size, and one that adds loses no precision
// to a prior much larger than what it adds.
std::vector<std::vector<float>> prior_gradients(const OpCase& c, const std::vector<std::vector<float>>& ref) {
  std::vector<std::vector<float>> priors(ref.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    if (ref[k].empty()) continue;
    float m = 0.0f;
    for (float v : ref[k]) m = std::max(m, std::fabs(v));
    if (m == 0.0f) m = 1.0f;
    kernels::PhiloxState rng(name_seed(c.name), kernels::philox_subsequence(kernels::kStreamTest, 200 + k), 0);
    priors[k].resize(ref[k].size());
    for (float& v : priors[k]) v = m * (2.0f * rng.uniform() - 1.0f);
  }
  return priors;
}

// The PriorParam, Intermediate and forward-only runs on `dev`, each in a workspace filled with
// NaN, against the CPU's zeroed-parameter run `ref` (see op_case.h).
std::string gradient_buffer_report(const OpCase& c, const HostInputs& h, Device dev, const Results& ref) {
  const std::vector<std::vector<float>> priors = prior_gradients(c, ref.grads);
  Run prior, fresh;
  build_run(prior, c, h, dev, GradInto::PriorParam, true, &priors);
  backward_projected(prior, c);
  build_run(fresh, c, h, dev, GradInto::Intermediate, true);
  backward_projected(fresh, c);
  // And the forward alone, under a NoGradScope (how teachers run): the same output and extra
  // outputs. A difference there that is the same at x + h and x - h cancels in the gradient
  // check's differences.
  Run no_grad;
  build_run(no_grad, c, h, dev, GradInto::None, true);
  Results prior_ref = ref;  // what the prior run must give: the prior plus the gradient
  for (size_t k = 0; k < ref.grads.size(); ++k)
    for (size_t i = 0; i < ref.grads[k].size(); ++i)
      prior_ref.grads[k][i] = static_cast<float>(static_cast<double>(priors[k][i]) + ref.grads[k][i]);
  Results forward_ref = ref;
  for (auto& g : forward_ref.grads) g.clear();
  return compare_results(" added to earlier contributions", results_of(prior, c), prior_ref, c.cuda_tol) +
         compare_results(" written to a fresh buffer", results_of(fresh, c), ref, c.cuda_tol) +
         compare_results(" without gradients", results_of(no_grad, c), forward_ref, c.cuda_tol);
}

}  // namespace

std::string run_gradient_buffer_check(const OpCase& c) {
  TS_CHECK(c.differentiable, "case ", c.name, " has no backward to check");
  const HostInputs h = make_inputs(c);
  Run cpu;
  build_run(cpu, c, h, Device::CPU, GradInto::ZeroedParam, false);
  backward_projected(cpu, c);
  return gradient_buffer_report(c, h, Device::CPU, results_of(cpu, c));
}

std::string run_cuda_comparison(const OpCase& c) {
  const HostInputs h = make_inputs(c);
  Run cpu, gpu;
  const GradInto into = c.differentiable ? GradInto::ZeroedParam : GradInto::None;
  build_run(cpu, c, h, Device::CPU, into, false);
  build_run(gpu, c, h, Device::CUDA, into, true);
  const bool backward = c.differentiable && cpu.out->requires_grad;
  if (backward) {
    backward_projected(cpu, c);
    backward_projected(gpu, c);
  }
  const Results ref = results_of(cpu, c);
  std::string report = compare_results("", results_of(gpu, c), ref, c.cuda_tol);
  if (backward) report += gradient_buffer_report(c, h, Device::CUDA, ref);
  return report;
}

}  // namespace tessera::testing
