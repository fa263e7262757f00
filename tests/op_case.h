// The table-driven backend-ops suite (after ggml's test-backend-ops).
//
// Each op case declares its inputs (shape, how to fill them, whether they get a gradient)
// and how to build the op from them. For every case, tests/main.cpp registers two tests:
//   BackendOpsGrad.<case>  central-difference gradient check of every input that has a
//                          gradient, on the CPU (runs on every machine);
//   BackendOpsCuda.<case>  CUDA forward, backward and extra outputs against the CPU
//                          reference, workspace poisoned with NaN first; SKIPPED with the
//                          reason where there is no GPU.
//
// The gradient check projects the output on a fixed random direction r: L = sum(out * r),
// analytic dL/dx from the tape seeded with r, numeric (L(x + eps) - L(x - eps)) / 2 eps, and
// fails when |a - n| > grad_tol * max(1, |a|, |n|) (Caffe's magnitude-scaled threshold).
// Error budget for the defaults: float32 outputs summed in double carry about 1e-7 relative
// error each, so with eps = 1e-2 the numeric derivative is good to about 1e-4 plus the
// O(eps^2) truncation term; grad_tol = 1e-2 leaves a wide margin yet catches any wrong
// backward, which is off by O(1).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/tensor.h"

namespace tessera::testing {

struct InputSpec {
  enum Fill {
    Uniform,      // uniform in [lo, hi)
    Labels,       // int32 in [0, classes)
    SoftTargets,  // rows of a probability distribution (last dim)
    Mask,         // f32 values in {0, 1}
  };
  Shape shape;
  Fill fill = Uniform;
  bool grad = true;  // a Var that requires a gradient (checked); false: a constant input
  float lo = -1.0f, hi = 1.0f;
  int classes = 0;
  // Finite differences skip elements with |x| < kink (inputs near a relu / max kink).
  float kink = 0.0f;
};

// What the build function sees: the graph, the inputs as Vars (labels and masks too, as
// constant Vars), and a place to expose extra outputs (running statistics) for comparison.
struct CaseContext {
  Graph& g;
  std::vector<Var*> in;
  std::vector<Tensor> extra_outputs;
  // Persistent buffers (e.g. BN running statistics) the case needs: allocated from the
  // workspace and filled with `value`; also compared CUDA vs CPU after the run.
  Tensor buffer(Shape s, float value);
};

struct OpCase {
  std::string name;  // letters, digits and '_' only: it is a test name
  std::vector<InputSpec> inputs;
  std::function<Var*(CaseContext&)> build;
  float eps = 1e-2f;       // finite-difference step
  float grad_tol = 1e-2f;  // gradient check threshold (see the error budget above)
  float cuda_tol = 1e-4f;  // CUDA vs CPU: |cuda - cpu| <= cuda_tol * max(1, |cpu|)
  int max_checked = 48;    // finite differences on at most this many elements per input
  bool differentiable = true;  // false: no gradient check (forward-only ops)
};

std::vector<OpCase>& op_cases();

struct OpCaseRegistrar {
  explicit OpCaseRegistrar(std::vector<OpCase> (*make)());
};

// Register the cases of one file:  TS_OP_CASES(conv_cases) { return { OpCase{...}, ... }; }
#define TS_OP_CASES(ident)                                                    \
  static std::vector<::tessera::testing::OpCase> ident();                     \
  static ::tessera::testing::OpCaseRegistrar ident##_registrar(&ident);       \
  static std::vector<::tessera::testing::OpCase> ident()

// Runs the checks; returns "" on success or the failure report.
std::string run_gradient_check(const OpCase& c);
std::string run_cuda_comparison(const OpCase& c);

// True when CUDA tests can run; otherwise `reason` says why (for GTEST_SKIP).
bool cuda_testable(std::string* reason);

}  // namespace tessera::testing
