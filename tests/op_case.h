// The table-driven backend-ops suite (after ggml's test-backend-ops).
//
// Each op case declares its inputs (shape, how to fill them, whether they get a gradient)
// and how to build the op from them. For every case, tests/main.cpp registers two tests:
//   BackendOpsGrad.<case>  central-difference gradient check of every input that has a
//                          gradient, on the CPU (runs on every machine);
//   BackendOpsGradBuffers.<case>  the backward's two ways into a gradient buffer, on the CPU
//                          (below);
//   BackendOpsCuda.<case>  CUDA forward, backward and extra outputs against the CPU
//                          reference, workspace poisoned with NaN first, and the buffer check
//                          on CUDA; SKIPPED with the reason where there is no GPU.
//
// The buffer check. A backward kernel adds (+=) into a gradient buffer that holds earlier
// contributions (a parameter's slot in the gradient arena, an input used twice), and writes
// every element of a fresh one it was handed unzeroed (Graph::grad_to_write). The gradient
// check feeds parameters with zeroed buffers, where adding and writing look the same and the
// write path never runs. So each case runs twice more against the CPU's zeroed-parameter
// gradients g, each in a workspace filled with NaN first: with parameter buffers that start at
// a prior p (uniform, as large as g), the result must be p + g; with the inputs as
// intermediates, whose buffers come from that workspace, it must be g. The outputs and extra
// outputs of both runs must be the reference's too, so a CPU forward that reads memory it did
// not write shows up here (the gradient check's workspace is not poisoned). A third run, the
// forward alone under a NoGradScope (how a teacher runs), must give the same output and extra
// outputs. All by the CUDA comparison's rule, at the case's cuda_tol.
//
// The gradient check projects the output on a fixed random direction r: L = sum(out * r),
// takes the analytic dL/dx from the tape seeded with r and the numeric one from central
// differences (L(x + h) - L(x - h)) / 2h, and compares them per input, as whole vectors a
// (analytic) and n (numeric) over the checked elements:
//   vector rule:   ||a - n||_2  <= grad_tol * max(||a||_2, ||n||_2)
//   element rule:  |a_i - n_i|  <= elem_tol * max(||a||_inf, ||n||_inf)   for every checked i
// Both rules are relative to the size of the gradient itself. An absolute threshold cannot
// work: a loss reduced to one number (a mean over N, a cross-entropy over K = 1000 classes)
// has gradients of 1e-3 or less, so anything under an absolute 0.01 would pass, even zero.
// A wrong scale or sign (zero, negated, x2, x0.5, x1.5, a missing 1/N) moves the vector by a
// third of its length or more; the vector rule sees it. One wrong element among many right
// ones (a label position, a border pixel) moves the vector little; the element rule sees it.
//
// Which elements: all of an input with at most full_check_limit elements; of a larger one,
// max_checked evenly spread elements plus, for an (N, K) input next to a Labels input of N
// entries and K classes, every label position (i, label_i): a cross-entropy's largest and
// most distinctive gradient sits there.
//
// Error budget for the defaults (h = eps = 1e-2, grad_tol = elem_tol = 1e-2): the outputs are
// float32, each with a relative rounding error near 1e-7, so the numeric derivative carries
// an error near 1e-7 * |out| / h per output summed into L, plus the O(h^2) truncation term.
// Measured over every case, the worst is 1.3e-3 for the vector rule (cross_entropy_k1000:
// that noise on 3000 elements against a gradient concentrated on 3 label positions) and
// 1.9e-3 for the element rule (byol_loss_aligned_student_only: at cos = 0.99 the gradient is
// small against the loss), most cases 1e-5 or less; the bugs above are off by 0.3 or more.
// A case that needs a looser tolerance states it, with the reason, next to the case.
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
    NoisyCopy,    // source_scale * (input `source`) + uniform noise in [lo, hi): see noisy_copy
  };
  Shape shape;
  Fill fill = Uniform;
  bool grad = true;  // a Var that requires a gradient (checked); false: a constant input
  float lo = -1.0f, hi = 1.0f;
  int classes = 0;
  // Finite differences skip elements with |x| < kink (inputs near a relu / max kink).
  float kink = 0.0f;
  // NoisyCopy only: the earlier input this one is made from, and its factor.
  int source = -1;
  float source_scale = 1.0f;
};

// An input made from an earlier one: scale * in[source] + uniform noise in [-noise, noise),
// same shape. Independent random inputs only reach the middle of some ops' domain (two
// random BYOL vectors have |cos| < 0.4); this reaches the ends (z = p + noise: cos near 1,
// as in training; z = -p + noise: cos near -1). Each stays an independent input of the op:
// the gradient check moves one input at a time and leaves the other where it was drawn.
InputSpec noisy_copy(const Shape& shape, int source, float scale, float noise, bool grad = true);

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
  float eps = 1e-2f;       // finite-difference step h
  float grad_tol = 1e-2f;  // vector rule (see above); loosen only with a comment saying why
  float elem_tol = 1e-2f;  // element rule (see above); the same
  float cuda_tol = 1e-4f;  // CUDA vs CPU and the buffer check: |got_i - want_i| <= cuda_tol * max_j |want_j|
  int full_check_limit = 4096;  // inputs with at most this many elements are checked whole
  int max_checked = 256;        // larger ones: this many spread elements plus the label positions
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
std::string run_gradient_buffer_check(const OpCase& c);  // on the CPU; c.differentiable
std::string run_cuda_comparison(const OpCase& c);
// The comparison run_cuda_comparison makes per tensor: "" or the first element outside
// |got_i - want_i| <= tol * max_j |want_j|, and how many; a non-finite got_i fails.
std::string compare_to_reference(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                                 float tol);

// What the gradient check works from, for tests of the cases themselves: input k's values
// (f32 inputs; labels as floats) and the elements of input k it checks, in increasing order
// (before the kink skip).
std::vector<float> case_input(const OpCase& c, size_t k);
std::vector<size_t> gradient_check_elements(const OpCase& c, size_t k);

// True when CUDA tests can run; otherwise `reason` says why (for GTEST_SKIP). When true, the
// CUDA backend is set to strict FP32 math (--math fp32) for the test.
bool cuda_testable(std::string* reason);

}  // namespace tessera::testing
