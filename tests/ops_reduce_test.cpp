// Backend-ops cases for the reductions sum, mean and the row-wise l2_normalize; plus what the
// gradient check cannot see: l2_normalize's eps clamp (a zero row, a caller's eps) forward and
// backward against F.normalize.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "tests/op_case.h"

namespace tessera::testing {

namespace {
InputSpec uniform(Shape s) { return InputSpec{s, InputSpec::Uniform, true, -1, 1, 0, 0.0f}; }

OpCase make_case(const char* name, Shape s, std::function<Var*(CaseContext&)> build) {
  OpCase c;
  c.name = name;
  c.inputs = {uniform(s)};
  c.build = std::move(build);
  return c;
}
}  // namespace

TS_OP_CASES(reduce_cases) {
  auto sum = [](CaseContext& k) { return ops::sum(k.g, k.in[0]); };
  auto mean = [](CaseContext& k) { return ops::mean(k.g, k.in[0]); };
  auto l2 = [](CaseContext& k) { return ops::l2_normalize(k.g, k.in[0]); };
  return {
      make_case("sum", Shape{5, 7}, sum),
      // More elements than the CUDA sum's 1024 threads: every thread sums several.
      make_case("sum_4099", Shape{4099}, sum),
      make_case("mean_4d", Shape{2, 3, 4, 5}, mean),
      make_case("mean_single", Shape{1}, mean),
      make_case("l2_normalize", Shape{4, 16}, l2),
      make_case("l2_normalize_odd", Shape{3, 7}, l2),
      // One row longer than a warp's 32 lanes, several elements per lane.
      make_case("l2_normalize_n1_d300", Shape{1, 300}, l2),
  };
}

TEST(L2Normalize, UnitRowsAndClampedZeroRow) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{2, 3});
  from_host(x.t, std::vector<float>{3, 0, 4, 0, 0, 0});
  std::vector<float> y = to_host_f32(ops::l2_normalize(g, g.input(x.t))->value);
  const std::vector<float> want{0.6f, 0.0f, 0.8f, 0.0f, 0.0f, 0.0f};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(y[i], want[i]) << i;  // a zero row stays zero, no NaN
}

// The clamp y = x / max(||x||, eps) with a caller's eps, forward and backward: the gradient
// check's random rows all have norms far above the default eps, and UnitRowsAndClampedZeroRow
// checks only the forward at the default. A row under the clamp is scaled by 1 / eps and its
// Jacobian is I / eps (kernels/common/l2norm.h); a row over it is normalised as usual. Expected
// numbers: torch's F.normalize (tests/oracles/normalize_torch.py: kY, kDx, kDxZeroRow), which
// are also the hand values (row 1: (dy - y <y, dy>) / 5).
TEST(L2Normalize, EpsClampFollowsFNormalize) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{3, 2}), dx(Device::CPU, Shape{3, 2}), dy(Device::CPU, Shape{3, 2});
  from_host(x.t, std::vector<float>{0.3f, 0.4f, 3, 4, 0, 0});
  from_host(dy.t, std::vector<float>{1, -2, 0.5f, 1.5f, 2, -1});
  fill_zero(dx.t);
  Var* y = ops::l2_normalize(g, g.param(x.t, dx.t, "x"), 1.0f);
  const std::vector<float> y_host = to_host_f32(y->value);
  g.backward(y, dy.t);
  const std::vector<float> want_y{0.3f, 0.4f, 0.6f, 0.8f, 0, 0}, want_dx{1, -2, -0.08f, 0.06f, 2, -1};
  const std::vector<float> got_dx = to_host_f32(dx.t);
  for (size_t i = 0; i < want_y.size(); ++i) {
    EXPECT_NEAR(y_host[i], want_y[i], 1e-6f) << i;
    EXPECT_NEAR(got_dx[i], want_dx[i], 1e-6f) << i;
  }

  // A zero row at the default eps = 1e-12: dx = dy / eps, finite (not dy / 0).
  g.clear();
  OwnedTensor x0(Device::CPU, Shape{1, 2}), dx0(Device::CPU, Shape{1, 2}), dy0(Device::CPU, Shape{1, 2});
  from_host(x0.t, std::vector<float>{0, 0});
  from_host(dy0.t, std::vector<float>{2, -1});
  fill_zero(dx0.t);
  g.backward(ops::l2_normalize(g, g.param(x0.t, dx0.t, "x")), dy0.t);
  const std::vector<float> got0 = to_host_f32(dx0.t);
  EXPECT_NEAR(got0[0], 2e12, 1e6) << "kDxZeroRow";
  EXPECT_NEAR(got0[1], -1e12, 1e6) << "kDxZeroRow";
}

TEST(ReduceShapeErrors, L2NormalizeNeedsRows) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{2, 3, 4});
  try {
    ops::l2_normalize(g, g.input(x.t));
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 3, 4)"), std::string::npos) << e.what();
  }
}

}  // namespace tessera::testing
