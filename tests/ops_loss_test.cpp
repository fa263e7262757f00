// Backend-ops cases for the losses (engine/ops_loss.cpp), plus the checks a gradient check
// cannot make: numerical stability with huge logits (wherever the row maximum sits), bad
// labels, BYOL's eps clamp on zero and tiny rows and its gradient to a student z alone, argmax
// ties, shape errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "tests/op_case.h"

namespace tessera::testing {

namespace {

InputSpec logits(Shape s) { return InputSpec{s, InputSpec::Uniform, true, -3, 3, 0, 0.0f}; }
InputSpec labels(int64_t n, int classes) {
  return InputSpec{Shape{n}, InputSpec::Labels, false, 0, 0, classes, 0.0f};
}
InputSpec constant(Shape s, InputSpec::Fill fill, float lo = 0, float hi = 1) {
  return InputSpec{s, fill, false, lo, hi, 0, 0.0f};
}

OpCase make_case(const char* name, std::vector<InputSpec> inputs, std::function<Var*(CaseContext&)> build) {
  OpCase c;
  c.name = name;
  c.inputs = std::move(inputs);
  c.build = std::move(build);
  return c;
}

// The argmax / max-prob op as a comparable case: max_prob is the output, the argmax indices
// are an extra output (as f32, which the comparison reads).
Var* argmax_case(CaseContext& k) {
  const Tensor& x = k.in[0]->value;
  const int64_t n = x.shape[0];
  Tensor argmax = k.g.workspace().alloc(Shape{n}, DType::I32);
  Tensor max_prob = k.g.workspace().alloc(Shape{n});
  ops::argmax_max_prob(x, argmax, max_prob);
  const std::vector<int32_t> idx = to_host_i32(argmax);
  from_host(k.buffer(Shape{n}, 0.0f), std::vector<float>(idx.begin(), idx.end()));
  return k.g.input(max_prob);
}

}  // namespace

TS_OP_CASES(loss_cases) {
  auto byol = [](CaseContext& k) { return ops::byol_loss(k.g, k.in[0], k.in[1]); };
  auto ce = [](CaseContext& k) { return ops::cross_entropy(k.g, k.in[0], k.in[1]->value); };
  auto ce_soft = [](CaseContext& k) { return ops::cross_entropy_soft(k.g, k.in[0], k.in[1]->value); };
  auto ce_weighted = [](CaseContext& k) {
    return ops::cross_entropy_weighted(k.g, k.in[0], k.in[1]->value, k.in[2]->value);
  };
  std::vector<OpCase> cases = {
      // The teacher's z needs no gradient (BYOL's usual call), then both, then one row.
      make_case("byol_loss_student_only", {logits({4, 32}), constant({4, 32}, InputSpec::Uniform, -1, 1)}, byol),
      make_case("byol_loss_both", {logits({3, 17}), logits({3, 17})}, byol),
      make_case("byol_loss_n1_d100", {logits({1, 100}), logits({1, 100})}, byol),
      // Random p and z are nearly orthogonal (|cos| about 1 / sqrt(D)), where the term the
      // normalisation of p adds to the gradient, -cos * pn / ||p|| (kernels/cpu/loss.cpp),
      // is small. In training cos nears 0.9 and that term dominates: z = p + noise (cos near
      // 0.9, and near 0.99 with z constant as in BYOL) and z = -p + noise (cos near -0.9).
      // ByolCasesReachTheEndsOfCos below checks these cosines.
      make_case("byol_loss_aligned_both", {logits({4, 32}), noisy_copy({4, 32}, 0, 1.0f, 1.5f)}, byol),
      make_case("byol_loss_aligned_student_only",
                {logits({4, 32}), noisy_copy({4, 32}, 0, 1.0f, 0.45f, /*grad=*/false)}, byol),
      make_case("byol_loss_opposite_both", {logits({3, 24}), noisy_copy({3, 24}, 0, -1.0f, 1.5f)}, byol),
      make_case("cross_entropy", {logits({4, 10}), labels(4, 10)}, ce),
      make_case("cross_entropy_n1", {logits({1, 3}), labels(1, 3)}, ce),
      make_case("cross_entropy_k1000", {logits({3, 1000}), labels(3, 1000)}, ce),
      // More elements than full_check_limit: the check samples, and must visit the label
      // positions (GradientCheckVisitsEveryLabelPosition below).
      make_case("cross_entropy_n5_k1000", {logits({5, 1000}), labels(5, 1000)}, ce),
      make_case("cross_entropy_soft", {logits({5, 10}), constant({5, 10}, InputSpec::SoftTargets)}, ce_soft),
      make_case("cross_entropy_soft_odd", {logits({2, 37}), constant({2, 37}, InputSpec::SoftTargets)}, ce_soft),
      // Targets whose rows do not sum to 1 (a label-smoothed row's rounding, a scaled target):
      // the gradient is sum(t) softmax - t, which rows summing to 1 cannot tell from softmax - t.
      make_case("cross_entropy_soft_unnormalised_targets", {logits({3, 6}), constant({3, 6}, InputSpec::Uniform, 0.1f, 1)},
                ce_soft),
      // FixMatch's confidence mask (0 / 1), and general per-sample weights.
      make_case("cross_entropy_masked", {logits({6, 10}), labels(6, 10), constant({6}, InputSpec::Mask)}, ce_weighted),
      make_case("cross_entropy_weighted",
                {logits({3, 5}), labels(3, 5), constant({3}, InputSpec::Uniform, 0, 2)}, ce_weighted),
  };
  for (Shape s : {Shape{7, 10}, Shape{2, 1000}}) {
    OpCase c = make_case(s[1] == 10 ? "argmax_max_prob" : "argmax_max_prob_k1000", {logits(s)}, argmax_case);
    c.differentiable = false;
    cases.push_back(c);
  }
  return cases;
}

// ---- the cases reach what they are there for ------------------------------------------

namespace {

const OpCase& find_case(const std::string& name) {
  for (const OpCase& c : op_cases())
    if (c.name == name) return c;
  throw Error("no op case " + name);
}

// Per-row cosine of a case's inputs 0 and 1, both (N, D).
std::vector<double> row_cosines(const OpCase& c) {
  const std::vector<float> p = case_input(c, 0), z = case_input(c, 1);
  const size_t d = static_cast<size_t>(c.inputs[0].shape[1]);
  std::vector<double> cos;
  for (size_t i = 0; i < p.size() / d; ++i) {
    double pp = 0, zz = 0, pz = 0;
    for (size_t j = i * d; j < (i + 1) * d; ++j) {
      pp += static_cast<double>(p[j]) * p[j];
      zz += static_cast<double>(z[j]) * z[j];
      pz += static_cast<double>(p[j]) * z[j];
    }
    cos.push_back(pz / std::sqrt(pp * zz));
  }
  return cos;
}

}  // namespace

// The aligned and opposite BYOL cases test the backward where training runs (|cos| near 1)
// only while their drawn inputs are there; a change to the fill or the seed could move them.
TEST(LossCases, ByolCasesReachTheEndsOfCos) {
  struct Want {
    const char* name;
    double sign, at_least;  // sign * cos >= at_least on every row
  };
  for (const Want& w : {Want{"byol_loss_aligned_both", 1, 0.8}, Want{"byol_loss_aligned_student_only", 1, 0.98},
                        Want{"byol_loss_opposite_both", -1, 0.8}})
    for (double cos : row_cosines(find_case(w.name))) EXPECT_GE(w.sign * cos, w.at_least) << w.name << ": cos " << cos;
}

// For every case with labels, the gradient check visits (i, label_i) of the (N, K) input:
// where a cross-entropy's gradient is largest and most distinctive (t_j = 1).
TEST(LossCases, GradientCheckVisitsEveryLabelPosition) {
  int sampled = 0, visited = 0;
  for (const OpCase& c : op_cases()) {
    if (!c.differentiable) continue;
    for (size_t l = 0; l < c.inputs.size(); ++l) {
      if (c.inputs[l].fill != InputSpec::Labels) continue;
      const std::vector<float> labels = case_input(c, l);
      const size_t classes = static_cast<size_t>(c.inputs[l].classes);
      for (size_t k = 0; k < c.inputs.size(); ++k) {
        const Shape& s = c.inputs[k].shape;
        if (!c.inputs[k].grad || c.inputs[k].fill == InputSpec::Labels || s.ndim != 2 ||
            static_cast<size_t>(s[0]) != labels.size() || static_cast<size_t>(s[1]) != classes)
          continue;
        const std::vector<size_t> idx = gradient_check_elements(c, k);
        if (idx.size() < static_cast<size_t>(s.numel())) ++sampled;
        for (size_t i = 0; i < labels.size(); ++i) {
          const size_t at = i * classes + static_cast<size_t>(labels[i]);
          EXPECT_TRUE(std::binary_search(idx.begin(), idx.end(), at)) << c.name << ": row " << i;
          ++visited;
        }
      }
    }
  }
  EXPECT_GE(sampled, 1) << "no labelled case is large enough to be sampled: the rule above is untested";
  EXPECT_GE(visited, 20);
}

// ---- what a gradient check cannot see -------------------------------------------------

class LossTest : public ::testing::Test {
 protected:
  Workspace ws{Device::CPU};
  Graph g{ws};
  std::vector<OwnedTensor> owned;
  Tensor f32(Shape s, std::vector<float> v) {
    owned.emplace_back(Device::CPU, s);
    from_host(owned.back().t, v);
    return owned.back().t;
  }
  Tensor i32(std::vector<int32_t> v) {
    owned.emplace_back(Device::CPU, Shape{static_cast<int64_t>(v.size())}, DType::I32);
    from_host(owned.back().t, v);
    return owned.back().t;
  }
  Var* param(Shape s, std::vector<float> v) {
    Tensor value = f32(s, v);
    owned.emplace_back(Device::CPU, s);
    fill_zero(owned.back().t);
    return g.param(value, owned.back().t, "logits");
  }
  static float scalar(const Var* v) { return to_host_f32(v->value)[0]; }
};

// Max subtraction: logits of +-1000 must give exact, finite losses and gradients.
TEST_F(LossTest, CrossEntropyStableForHugeLogits) {
  Var* x = param({2, 3}, {1000, 0, -1000, 1000, 0, -1000});
  Var* loss = ops::cross_entropy(g, x, i32({0, 1}));
  EXPECT_FLOAT_EQ(scalar(loss), 500.0f);  // (0 + 1000) / 2
  g.backward(loss);
  const std::vector<float> dx = to_host_f32(x->grad);
  const std::vector<float> want{0, 0, 0, 0.5f, -0.5f, 0};
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], want[i], 1e-6f) << i;
}

// The same with the huge logit in the middle and last: CrossEntropyStableForHugeLogits has its
// maximum first in every row, where a row maximum that skips elements (or starts late) still
// finds it. Hand values: row 0's lse is 1000 (label 0: loss 1000), row 1's is 1000 at its label
// (loss 0); the gradient is (softmax - onehot) / N = (-1, 1, 0) / 2 and 0.
TEST_F(LossTest, CrossEntropyStableWhereTheMaximumIsNotFirst) {
  Var* x = param({2, 3}, {0, 1000, -1000, -1000, 0, 1000});
  Var* loss = ops::cross_entropy(g, x, i32({0, 2}));
  EXPECT_FLOAT_EQ(scalar(loss), 500.0f);
  g.backward(loss);
  const std::vector<float> dx = to_host_f32(x->grad);
  const std::vector<float> want{-0.5f, 0.5f, 0, 0, 0, 0};
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], want[i], 1e-6f) << i;
  // The soft-target loss shares the row logsumexp: one-hot targets give the same loss.
  EXPECT_FLOAT_EQ(scalar(ops::cross_entropy_soft(g, x, f32({2, 3}, {1, 0, 0, 0, 0, 1}))), 500.0f);
}

TEST_F(LossTest, CrossEntropyMatchesLogSoftmax) {
  Var* x = param({1, 3}, {1, 2, 3});
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(scalar(ops::cross_entropy(g, x, i32({0}))), lse - 1.0, 1e-6);
  EXPECT_NEAR(scalar(ops::cross_entropy_soft(g, x, f32({1, 3}, {0.5f, 0.5f, 0}))), lse - 1.5, 1e-6);
  EXPECT_NEAR(scalar(ops::cross_entropy_weighted(g, x, i32({2}), f32({1}, {0.25f}))), 0.25 * (lse - 3.0), 1e-6);
}

// FixMatch divides by the whole batch, not by the number of confident samples.
TEST_F(LossTest, WeightedCrossEntropyAveragesOverAllRows) {
  Var* x = param({2, 2}, {0, 0, 5, -5});
  Var* loss = ops::cross_entropy_weighted(g, x, i32({0, 1}), f32({2}, {1, 0}));
  EXPECT_NEAR(scalar(loss), 0.5 * std::log(2.0), 1e-6);
  g.backward(loss);
  const std::vector<float> dx = to_host_f32(x->grad);
  EXPECT_NEAR(dx[0], -0.25f, 1e-6f);
  EXPECT_NEAR(dx[1], 0.25f, 1e-6f);
  EXPECT_EQ(dx[2], 0.0f);  // masked row: no gradient at all
  EXPECT_EQ(dx[3], 0.0f);
}

TEST_F(LossTest, BadLabelGivesNaNNotACrash) {
  Var* x = param({2, 3}, {0, 0, 0, 0, 0, 0});
  EXPECT_TRUE(std::isnan(scalar(ops::cross_entropy(g, x, i32({1, 3})))));
  EXPECT_TRUE(std::isnan(scalar(ops::cross_entropy(g, x, i32({-1, 0})))));
}

TEST_F(LossTest, ByolLossOfAlignedAndOppositeRows) {
  Var* p = param({2, 2}, {1, 1, 3, 0});
  Var* z = g.input(f32({2, 2}, {2, 2, -1, 0}));
  EXPECT_NEAR(scalar(ops::byol_loss(g, p, z)), (0.0 + 4.0) / 2, 1e-6);  // cos = 1 and cos = -1
}

// BYOL normalises with F.normalize's clamp, max(||v||, 1e-12), and the op cases never reach it
// (their rows have norms near 1). A zero p or z row gives cos 0 (loss 2) and finite gradients:
// the zero row's is -2 g zn / eps (the clamped Jacobian I / eps), the other input's is 0. A row
// of norm 1.4e-9 is over the clamp, so it is a unit vector like any other (here aligned: loss
// 0); a larger eps would clamp it. Expected numbers: tests/oracles/normalize_torch.py (kByolLoss,
// kByolDp, kByolDz: torch's F.normalize in float64), also the hand values with g = -2 / 3. Row
// 1's dp is 0 exactly but float rounding there is scaled by 1 / ||p|| = 7e8: not compared.
TEST_F(LossTest, ByolLossClampsZeroAndTinyRowsAsFNormalize) {
  Var* p = param({3, 2}, {0, 0, 1e-9f, 1e-9f, 3, 4});
  Var* z = param({3, 2}, {3, 4, 2, 2, 0, 0});
  Var* loss = ops::byol_loss(g, p, z);
  EXPECT_NEAR(scalar(loss), 4.0 / 3.0, 1e-6);
  g.backward(loss);
  const std::vector<float> dp = to_host_f32(p->grad), dz = to_host_f32(z->grad);
  const std::vector<double> want_dp{-4e11, -5.33333333e11, 0, 0, 0, 0}, want_dz{0, 0, 0, 0, -4e11, -5.33333333e11};
  for (size_t i : {0u, 1u, 4u, 5u}) EXPECT_NEAR(dp[i], want_dp[i], 1e-5 * std::fabs(want_dp[i]) + 1e-6) << "dp " << i;
  for (size_t i = 0; i < dz.size(); ++i)
    EXPECT_NEAR(dz[i], want_dz[i], 1e-5 * std::fabs(want_dz[i]) + 1e-6) << "dz " << i;
}

// The loss needs a gradient when either input does: a constant p with a student z (the cases
// always give p one) still records the backward. Hand value: p = (1, 0), z = (0, 2), N = 1:
// cos = 0 and dz = -2 (pn - zn cos) / ||z|| = (-1, 0).
TEST_F(LossTest, ByolLossReachesZWhenOnlyZNeedsAGradient) {
  Var* p = g.input(f32({1, 2}, {1, 0}));
  Var* z = param({1, 2}, {0, 2});
  Var* loss = ops::byol_loss(g, p, z);
  ASSERT_TRUE(loss->requires_grad);
  g.backward(loss);
  const std::vector<float> dz = to_host_f32(z->grad);
  EXPECT_NEAR(dz[0], -1.0f, 1e-6f);
  EXPECT_NEAR(dz[1], 0.0f, 1e-6f);
}

TEST_F(LossTest, ArgmaxTakesFirstMaximumAndItsProbability) {
  Tensor x = f32({3, 4}, {0, 2, 2, 1, -5, -5, -5, -5, 0, 0, 0, 7});
  Tensor idx = i32({9, 9, 9});
  Tensor prob = f32({3}, {0, 0, 0});
  ops::argmax_max_prob(x, idx, prob);
  EXPECT_EQ(to_host_i32(idx), (std::vector<int32_t>{1, 0, 3}));
  const std::vector<float> p = to_host_f32(prob);
  const double e = std::exp(1.0);
  EXPECT_NEAR(p[0], e * e / (1 + 2 * e * e + e), 1e-6);
  EXPECT_NEAR(p[1], 0.25, 1e-6);
  EXPECT_NEAR(p[2], 1.0 / (3 * std::exp(-7.0) + 1), 1e-6);
}

TEST_F(LossTest, ShapeErrorsNameBothShapes) {
  Var* x = param({4, 10}, std::vector<float>(40, 0.0f));
  auto expect_naming = [](auto op, std::initializer_list<const char*> parts) {
    try {
      op();
      ADD_FAILURE() << "expected a tessera::Error";
    } catch (const Error& e) {
      for (const char* s : parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  };
  EXPECT_THROW(ops::cross_entropy(g, x, i32({0, 1, 2, 3, 4})), Error);
  expect_naming([&] { ops::cross_entropy(g, x, i32({0, 1, 2, 3, 4})); }, {"labels", "(5)", "(4, 10)"});
  expect_naming([&] { ops::cross_entropy_soft(g, x, f32({4, 9}, std::vector<float>(36, 0.0f))); },
                {"targets", "(4, 9)", "(4, 10)"});
  expect_naming([&] { ops::cross_entropy_weighted(g, x, i32({0, 1, 2, 3}), f32({3}, {1, 1, 1})); },
                {"weight", "(3)", "(4, 10)"});
  Var* z = g.input(f32({4, 9}, std::vector<float>(36, 0.0f)));
  expect_naming([&] { ops::byol_loss(g, x, z); }, {"byol_loss", "(4, 10)", "(4, 9)"});
  expect_naming([&] { ops::cross_entropy(g, x, f32({4}, {0, 0, 0, 0})); }, {"labels", "i32", "f32"});
}

}  // namespace tessera::testing
