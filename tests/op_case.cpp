#include "tests/op_case.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>

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
  return true;
}

Tensor CaseContext::buffer(Shape s, float value) {
  Tensor t = g.workspace().alloc(s);
  fill_value(t, value);
  extra_outputs.push_back(t);
  return t;
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
  std::vector<OwnedTensor> values, grads;
  Var* out = nullptr;
  std::vector<Tensor> extra;
};

void build_run(Run& r, const OpCase& c, const HostInputs& h, Device dev, bool with_grad, bool poison) {
  r.ws = std::make_unique<Workspace>(dev, 0);
  if (poison) {
    // Size the workspace with a throw-away run, then fill it with NaN before the real one.
    Run dry;
    build_run(dry, c, h, dev, with_grad, false);
    r.ws = std::make_unique<Workspace>(dev, dry.ws->high_water() * 2 + 4096);
    r.ws->poison();
  }
  r.g = std::make_unique<Graph>(*r.ws);
  CaseContext ctx{*r.g, {}, {}};
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const InputSpec& s = c.inputs[k];
    const bool labels = s.fill == InputSpec::Labels;
    r.values.emplace_back(dev, s.shape, labels ? DType::I32 : DType::F32);
    if (labels) from_host(r.values.back().t, h.i32[k]);
    else from_host(r.values.back().t, h.f32[k]);
    if (s.grad && with_grad && !labels) {
      r.grads.emplace_back(dev, s.shape);
      fill_zero(r.grads.back().t);
      ctx.in.push_back(r.g->param(r.values.back().t, r.grads.back().t, "input"));
    } else {
      r.grads.emplace_back();
      ctx.in.push_back(r.g->input(r.values.back().t, "input"));
    }
  }
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

// The elements a gradient check visits: all of a small input, an even spread of a large one.
std::vector<size_t> checked_elements(size_t n, int max_checked) {
  std::vector<size_t> idx;
  const size_t m = std::min(n, static_cast<size_t>(max_checked));
  for (size_t i = 0; i < m; ++i) idx.push_back(i * n / m);
  return idx;
}

std::string compare(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                    float tol) {
  if (got.size() != want.size()) return cat(what, ": size ", got.size(), " vs ", want.size(), "\n");
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const float a = got[i], b = want[i];
    const bool ok = std::isfinite(a) && std::fabs(a - b) <= tol * std::max(1.0f, std::fabs(b));
    if (!ok && bad++ == 0) first = cat(what, "[", i, "]: cuda ", a, ", cpu ", b);
  }
  if (bad == 0) return "";
  return cat(first, " (", bad, " of ", got.size(), " elements outside tolerance ", tol, ")\n");
}

}  // namespace

std::string run_gradient_check(const OpCase& c) {
  const HostInputs h = make_inputs(c);
  Run base;
  build_run(base, c, h, Device::CPU, true, false);
  TS_CHECK(base.out->requires_grad, "case ", c.name, ": the output needs no gradient");
  const std::vector<float> r = projection(c, base.out->value.shape);
  OwnedTensor seed(Device::CPU, base.out->value.shape);
  from_host(seed.t, r);
  base.g->backward(base.out, seed.t);

  std::string report;
  int checked = 0;
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const InputSpec& s = c.inputs[k];
    if (!s.grad || s.fill == InputSpec::Labels) continue;
    const std::vector<float> analytic = to_host_f32(base.grads[k].t);
    int failures = 0;
    for (size_t j : checked_elements(analytic.size(), c.max_checked)) {
      if (std::fabs(h.f32[k][j]) < s.kink) continue;
      double l[2];
      for (int side = 0; side < 2; ++side) {
        HostInputs moved = h;
        moved.f32[k][j] += side == 0 ? c.eps : -c.eps;
        Run probe;
        build_run(probe, c, moved, Device::CPU, false, false);
        l[side] = projected(probe.out->value, r);
      }
      const double numeric = (l[0] - l[1]) / (2.0 * c.eps);
      const double a = analytic[j];
      const double scale = std::max({1.0, std::fabs(a), std::fabs(numeric)});
      ++checked;
      if (std::fabs(a - numeric) > c.grad_tol * scale && failures++ < 3)
        report += cat("input ", k, " element ", j, ": analytic ", a, ", numeric ", numeric, "\n");
    }
    if (failures > 3) report += cat("input ", k, ": ", failures, " elements failed in all\n");
  }
  if (checked == 0 && report.empty()) report = "no element was checked (every input skipped)\n";
  return report;
}

std::string run_cuda_comparison(const OpCase& c) {
  const HostInputs h = make_inputs(c);
  Run cpu, gpu;
  build_run(cpu, c, h, Device::CPU, c.differentiable, false);
  build_run(gpu, c, h, Device::CUDA, c.differentiable, true);
  std::string report = compare("output", to_host_f32(gpu.out->value), to_host_f32(cpu.out->value), c.cuda_tol);
  if (c.differentiable && cpu.out->requires_grad) {
    const std::vector<float> r = projection(c, cpu.out->value.shape);
    OwnedTensor seed_cpu(Device::CPU, cpu.out->value.shape), seed_gpu(Device::CUDA, cpu.out->value.shape);
    from_host(seed_cpu.t, r);
    from_host(seed_gpu.t, r);
    cpu.g->backward(cpu.out, seed_cpu.t);
    gpu.g->backward(gpu.out, seed_gpu.t);
    for (size_t k = 0; k < c.inputs.size(); ++k) {
      if (!cpu.grads[k].t.defined()) continue;
      report += compare(cat("grad of input ", k).c_str(), to_host_f32(gpu.grads[k].t),
                        to_host_f32(cpu.grads[k].t), c.cuda_tol);
    }
  }
  for (size_t e = 0; e < cpu.extra.size(); ++e)
    report += compare(cat("extra output ", e).c_str(), to_host_f32(gpu.extra[e]), to_host_f32(cpu.extra[e]),
                      c.cuda_tol);
  return report;
}

}  // namespace tessera::testing
