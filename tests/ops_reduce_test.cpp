// Backend-ops cases for the reductions sum, mean and the row-wise l2_normalize.
#include <gtest/gtest.h>

#include <cmath>

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
