// Backend-ops cases for the element-wise and linear ops (engine/ops_basic.cpp).
#include "engine/ops.h"
#include "tests/op_case.h"

namespace tessera::testing {

TS_OP_CASES(basic_cases) {
  std::vector<OpCase> cases;
  {
    OpCase c;
    c.name = "relu";
    c.inputs = {InputSpec{Shape{4, 33}, InputSpec::Uniform, true, -1, 1, 0, /*kink=*/0.02f}};
    c.build = [](CaseContext& k) { return ops::relu(k.g, k.in[0]); };
    cases.push_back(c);
  }
  {
    OpCase c;
    c.name = "leaky_relu_0_1";
    c.inputs = {InputSpec{Shape{2, 3, 5, 7}, InputSpec::Uniform, true, -1, 1, 0, 0.02f}};
    c.build = [](CaseContext& k) { return ops::leaky_relu(k.g, k.in[0], 0.1f); };
    cases.push_back(c);
  }
  return cases;
}

}  // namespace tessera::testing
