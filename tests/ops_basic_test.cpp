// Backend-ops cases and shape checks for the element-wise, linear and view ops
// (engine/ops_basic.cpp).
#include <gtest/gtest.h>

#include "engine/check.h"
#include "engine/ops.h"
#include "tests/op_case.h"

namespace tessera::testing {

namespace {
InputSpec uniform(Shape s, bool grad = true) { return InputSpec{s, InputSpec::Uniform, grad, -1, 1, 0, 0.0f}; }
}  // namespace

TS_OP_CASES(basic_cases) {
  std::vector<OpCase> cases;
  auto add_case = [&](const char* name, std::vector<InputSpec> inputs, std::function<Var*(CaseContext&)> build) {
    OpCase c;
    c.name = name;
    c.inputs = std::move(inputs);
    c.build = std::move(build);
    cases.push_back(c);
  };
  add_case("relu", {InputSpec{Shape{4, 33}, InputSpec::Uniform, true, -1, 1, 0, /*kink=*/0.02f}},
           [](CaseContext& k) { return ops::relu(k.g, k.in[0]); });
  add_case("leaky_relu_0_1", {InputSpec{Shape{2, 3, 5, 7}, InputSpec::Uniform, true, -1, 1, 0, 0.02f}},
           [](CaseContext& k) { return ops::leaky_relu(k.g, k.in[0], 0.1f); });

  // linear: with and without bias, odd sizes, a single row, a long reduction (IN = 1024).
  auto linear_bias = [](CaseContext& k) { return ops::linear(k.g, k.in[0], k.in[1], k.in[2]); };
  auto linear_no_bias = [](CaseContext& k) { return ops::linear(k.g, k.in[0], k.in[1], nullptr); };
  add_case("linear_bias_odd", {uniform({5, 7}), uniform({3, 7}), uniform({3})}, linear_bias);
  add_case("linear_no_bias", {uniform({4, 16}), uniform({9, 16})}, linear_no_bias);
  add_case("linear_n1", {uniform({1, 5}), uniform({6, 5}), uniform({6})}, linear_bias);
  add_case("linear_large_in", {uniform({3, 1024}), uniform({4, 1024}), uniform({4})}, linear_bias);
  // Only the weight and bias need gradients (the first layer of a network).
  add_case("linear_const_input", {uniform({4, 6}, false), uniform({5, 6}), uniform({5})}, linear_bias);

  add_case("add", {uniform({3, 5}), uniform({3, 5})}, [](CaseContext& k) { return ops::add(k.g, k.in[0], k.in[1]); });
  add_case("add_4d_one_const", {uniform({2, 3, 4, 5}), uniform({2, 3, 4, 5}, false)},
           [](CaseContext& k) { return ops::add(k.g, k.in[0], k.in[1]); });
  // x + x: both contributions must accumulate into one gradient.
  add_case("add_same_input", {uniform({7})}, [](CaseContext& k) { return ops::add(k.g, k.in[0], k.in[0]); });
  // One intermediate read by three ops: the first backward to reach its gradient writes it
  // (Graph::grad_to_write: no zero fill), the other two add to it.
  add_case("fan_out_first_gradient_written",
           {InputSpec{Shape{2, 3, 5, 5}, InputSpec::Uniform, true, -1, 1, 0, /*kink=*/0.02f}, uniform({3, 3, 3, 3})},
           [](CaseContext& k) {
             Var* h = ops::scale(k.g, k.in[0], 1.5f);
             Var* y = ops::add(k.g, ops::conv2d(k.g, h, k.in[1], nullptr, 1, 1), ops::relu(k.g, h));
             return ops::add(k.g, y, ops::scale(k.g, h, -0.5f));
           });
  // The in-place forms on an input they may overwrite (an add's output: Var::overwritable), so
  // the in-place path runs; the kink spacing of x keeps x + x at least 0.04 from relu's kink.
  const InputSpec kinked{Shape{3, 2, 5}, InputSpec::Uniform, true, -1, 1, 0, 0.02f};
  add_case("relu_in_place", {kinked}, [](CaseContext& k) { return ops::relu_(k.g, ops::add(k.g, k.in[0], k.in[0])); });
  add_case("leaky_relu_in_place", {kinked},
           [](CaseContext& k) { return ops::leaky_relu_(k.g, ops::add(k.g, k.in[0], k.in[0]), 0.1f); });
  add_case("add_in_place", {uniform({2, 3, 4}), uniform({2, 3, 4}), uniform({2, 3, 4})},
           [](CaseContext& k) { return ops::add_(k.g, ops::add(k.g, k.in[0], k.in[1]), k.in[2]); });
  add_case("scale", {uniform({2, 3, 4})}, [](CaseContext& k) { return ops::scale(k.g, k.in[0], -2.5f); });
  add_case("flatten_4d", {uniform({2, 3, 4, 5})}, [](CaseContext& k) { return ops::flatten(k.g, k.in[0]); });
  // The view's gradient must reach x through the consumer's backward.
  add_case("flatten_then_linear", {uniform({3, 2, 2, 2}), uniform({4, 8}), uniform({4})}, [](CaseContext& k) {
    return ops::linear(k.g, ops::flatten(k.g, k.in[0]), k.in[1], k.in[2]);
  });
  return cases;
}

// ---- shape errors name both shapes --------------------------------------------------------

class ShapeErrors : public ::testing::Test {
 protected:
  Workspace ws{Device::CPU};
  Graph g{ws};
  std::vector<OwnedTensor> owned;
  Var* var(Shape s) {
    owned.emplace_back(Device::CPU, s);
    fill_zero(owned.back().t);
    return g.input(owned.back().t, "t");
  }
};

// Runs `op`, expects an Error whose message contains every string in `parts`.
template <typename F>
void expect_error_naming(F op, std::initializer_list<const char*> parts) {
  try {
    op();
    ADD_FAILURE() << "expected a tessera::Error";
  } catch (const Error& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST_F(ShapeErrors, LinearInFeatures) {
  Var *x = var({4, 3}), *w = var({5, 7});
  EXPECT_THROW(ops::linear(g, x, w, nullptr), Error);
  expect_error_naming([&] { ops::linear(g, x, w, nullptr); }, {"linear", "(4, 3)", "(5, 7)"});
}

TEST_F(ShapeErrors, LinearBias) {
  Var *x = var({4, 3}), *w = var({5, 3}), *b = var({4});
  expect_error_naming([&] { ops::linear(g, x, w, b); }, {"bias", "(4)", "(5, 3)"});
}

TEST_F(ShapeErrors, LinearRank) {
  Var *x = var({2, 3, 4}), *w = var({5, 3});
  expect_error_naming([&] { ops::linear(g, x, w, nullptr); }, {"(2, 3, 4)", "(5, 3)"});
}

TEST_F(ShapeErrors, Add) {
  Var *a = var({2, 3}), *b = var({3, 2});
  EXPECT_THROW(ops::add(g, a, b), Error);
  expect_error_naming([&] { ops::add(g, a, b); }, {"add", "(2, 3)", "(3, 2)"});
}

TEST_F(ShapeErrors, FlattenNeedsBatchDim) {
  Var* x = var({6});
  expect_error_naming([&] { ops::flatten(g, x); }, {"flatten", "(6)"});
}

}  // namespace tessera::testing
