// The gradient check of the backend-ops suite (tests/op_case.h), tested on an op with a
// planted bug: it must pass the right backward and reject each kind of wrong one, on
// gradients as small as a loss's (a mean over 120 elements: about 1/120 each), where the
// old absolute threshold of 0.01 passed them all. The same for the gradient-buffer check,
// on backwards that misuse the buffer they are handed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "tests/op_case.h"

namespace tessera::testing {
namespace {

// y = s * sum(x) on the CPU, with a backward that multiplies the right gradient (s * dy on
// every element) by `factor` and adds `bump` times it to element `at`. factor = 1, bump = 0
// is the right backward.
struct Planted {
  float s = 1.0f, factor = 1.0f, bump = 0.0f;
  size_t at = 0;
};

Var* planted_sum(Graph& g, Var* x, Planted p) {
  Var* y = g.make(Shape{1}, {x});
  double total = 0;
  for (float v : to_host_f32(x->value)) total += v;
  from_host(y->value, std::vector<float>{static_cast<float>(p.s * total)});
  if (y->requires_grad) {
    g.record("planted_sum", x->name, [&g, x, y, p] {
      const float right = p.s * to_host_f32(g.grad(y))[0];
      std::vector<float> dx = to_host_f32(g.grad(x));
      for (size_t i = 0; i < dx.size(); ++i) dx[i] += p.factor * right + (i == p.at ? p.bump * right : 0.0f);
      from_host(g.grad(x), dx);
    });
  }
  return y;
}

OpCase planted_case(int64_t n, Planted p) {
  OpCase c;
  c.name = "planted_sum";
  c.inputs = {InputSpec{Shape{n}}};
  c.build = [p](CaseContext& k) { return planted_sum(k.g, k.in[0], p); };
  return c;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

TEST(GradientCheck, PassesTheRightBackward) {
  EXPECT_EQ(run_gradient_check(planted_case(120, Planted{1.0f / 120})), "");
  EXPECT_EQ(run_gradient_check(planted_case(3000, Planted{})), "");
}

// A mean over 120 elements: every element's gradient is r / 120 < 0.0084.
TEST(GradientCheck, RejectsAWrongScaleOfATinyGradient) {
  for (float factor : {0.0f, -1.0f, 2.0f, 0.5f, 1.5f, 120.0f /* a missing 1/N */}) {
    const std::string report = run_gradient_check(planted_case(120, Planted{1.0f / 120, factor}));
    EXPECT_TRUE(contains(report, "grad_tol")) << "factor " << factor << ": " << report;
  }
}

// The CUDA-vs-CPU rule is relative to the tensor's largest value: a gradient of size 1e-4
// (a mean over 10,000) scaled by 0.7, or left unwritten, fails; float32 drift passes.
TEST(CudaComparisonRule, RejectsAWrongScaleOfATinyTensor) {
  std::vector<float> want(100), drift(100), scaled(100), zero(100, 0.0f), nan(100);
  for (size_t i = 0; i < want.size(); ++i) {
    want[i] = 1e-4f * std::sin(0.3f * float(i) + 0.1f);
    drift[i] = want[i] * (1.0f + 3e-7f * float(i % 5));
    scaled[i] = 0.7f * want[i];
    nan[i] = i == 42 ? std::nanf("") : want[i];
  }
  EXPECT_EQ(compare_to_reference("g", drift, want, 1e-4f), "");
  EXPECT_TRUE(contains(compare_to_reference("g", scaled, want, 1e-4f), "outside tolerance"));
  EXPECT_TRUE(contains(compare_to_reference("g", zero, want, 1e-4f), "outside tolerance"));
  EXPECT_TRUE(contains(compare_to_reference("g", nan, want, 1e-4f), "g[42]"));
}

// One element off by 30% among 3000 right ones moves the vector by 0.3 / sqrt(3000) = 0.5%
// of its length, inside grad_tol: the element rule is what sees it.
TEST(GradientCheck, RejectsOneWrongElementAmongThousands) {
  const std::string report = run_gradient_check(planted_case(3000, Planted{1.0f, 1.0f, 0.3f, 1234}));
  EXPECT_TRUE(contains(report, "element 1234:")) << report;
  EXPECT_FALSE(contains(report, "grad_tol")) << report;
}

// An output that does not depend on the input: both gradients are zero and no backward,
// right or wrong, could be told apart. The check says so instead of passing.
TEST(GradientCheck, RejectsACaseThatChecksNothing) {
  const std::string report = run_gradient_check(planted_case(10, Planted{0.0f}));
  EXPECT_TRUE(contains(report, "checks nothing")) << report;
}

TEST(GradientCheck, NoisyCopyIsItsSourceScaledPlusBoundedNoise) {
  OpCase c;
  c.name = "noisy_copy";
  c.inputs = {InputSpec{Shape{2, 50}}, noisy_copy(Shape{2, 50}, 0, -1.0f, 0.1f)};
  const std::vector<float> x = case_input(c, 0), y = case_input(c, 1);
  double spread = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(y[i] + x[i]), 0.1f) << i;
    spread = std::max(spread, std::fabs(static_cast<double>(y[i]) + x[i]));
  }
  EXPECT_GT(spread, 0.05);  // the noise is there
}

// y = 2 x on the CPU, right or with one of five bugs the gradient check cannot see. Three are
// in how the backward hands dx = 2 dy to x's buffer through Graph::grad_to_write (the gradient
// check's parameter buffers start at zero, where they go unseen); two are the forward's: it
// adds to its output, which a fresh workspace happens to give it zeroed, or it computes
// something else under a NoGradScope.
enum class BufferUse {
  Right,
  OverwritesEarlierContributions,
  AddsToAFreshBuffer,
  WritesHalfOfAFreshBuffer,
  ForwardAddsToItsOutput,
  ForwardWithoutGradientsIsOffByAConstant
};

Var* planted_double(Graph& g, Var* x, BufferUse use) {
  Var* y = g.make(x->value.shape, {x});
  std::vector<float> v = to_host_f32(x->value);
  const std::vector<float> before = to_host_f32(y->value);
  const float offset = use == BufferUse::ForwardWithoutGradientsIsOffByAConstant && !g.grad_enabled() ? 0.5f : 0.0f;
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = 2.0f * v[i] + offset + (use == BufferUse::ForwardAddsToItsOutput ? before[i] : 0.0f);
  from_host(y->value, v);
  if (y->requires_grad) {
    g.record("planted_double", x->name, [&g, x, y, use] {
      const std::vector<float> dy = to_host_f32(g.grad(y));
      bool accumulate = false;
      const Tensor buf = g.grad_to_write(x, &accumulate);
      std::vector<float> dx = to_host_f32(buf);
      for (size_t i = 0; i < dx.size(); ++i) {
        const bool add = use == BufferUse::OverwritesEarlierContributions ? false
                         : use == BufferUse::AddsToAFreshBuffer          ? true
                                                                          : accumulate;
        if (!accumulate && use == BufferUse::WritesHalfOfAFreshBuffer && i >= dx.size() / 2) continue;
        dx[i] = (add ? dx[i] : 0.0f) + 2.0f * dy[i];
      }
      from_host(buf, dx);
    });
  }
  return y;
}

OpCase planted_buffer_case(BufferUse use) {
  OpCase c;
  c.name = "planted_double";
  c.inputs = {InputSpec{Shape{4, 5}}};
  c.build = [use](CaseContext& k) { return planted_double(k.g, k.in[0], use); };
  return c;
}

TEST(GradientBufferCheck, PassesTheRightBackward) {
  EXPECT_EQ(run_gradient_check(planted_buffer_case(BufferUse::Right)), "");
  EXPECT_EQ(run_gradient_buffer_check(planted_buffer_case(BufferUse::Right)), "");
}

// Each bug passes the gradient check (zeroed parameter buffers) and fails the buffer check.
TEST(GradientBufferCheck, RejectsEachWrongUseOfTheBuffer) {
  const struct {
    BufferUse use;
    const char* seen_as;
  } bugs[] = {
      {BufferUse::OverwritesEarlierContributions, "added to earlier contributions"},
      {BufferUse::AddsToAFreshBuffer, "written to a fresh buffer"},
      {BufferUse::WritesHalfOfAFreshBuffer, "written to a fresh buffer"},
      {BufferUse::ForwardAddsToItsOutput, "output written to a fresh buffer"},
      // The gradient check's probes run without gradients: the constant cancels in L(x+h) - L(x-h).
      {BufferUse::ForwardWithoutGradientsIsOffByAConstant, "output without gradients"},
  };
  for (const auto& bug : bugs) {
    if (bug.use != BufferUse::ForwardAddsToItsOutput) {  // its forward reads whatever the memory held
      EXPECT_EQ(run_gradient_check(planted_buffer_case(bug.use)), "") << bug.seen_as;
    }
    const std::string report = run_gradient_buffer_check(planted_buffer_case(bug.use));
    EXPECT_TRUE(contains(report, bug.seen_as)) << bug.seen_as << ": " << report;
  }
}

}  // namespace
}  // namespace tessera::testing
