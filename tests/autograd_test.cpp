// The tape end to end: a small MLP (linear - relu - linear - cross_entropy) against gradients
// derived by hand in this file, the no-grad scope, and requires_grad being respected.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"

namespace tessera {
namespace {

constexpr int64_t N = 3, IN = 4, H = 5, C = 3;

std::vector<float> random_values(size_t n, uint64_t stream) {
  kernels::PhiloxState rng(7, kernels::philox_subsequence(kernels::kStreamTest, stream), 0);
  std::vector<float> v(n);
  for (float& e : v) e = 2.0f * rng.uniform() - 1.0f;
  return v;
}

// Parameters and their gradient buffers on the CPU, filled once.
struct Mlp {
  OwnedTensor x{Device::CPU, Shape{N, IN}}, w1{Device::CPU, Shape{H, IN}}, b1{Device::CPU, Shape{H}},
      w2{Device::CPU, Shape{C, H}}, b2{Device::CPU, Shape{C}}, labels{Device::CPU, Shape{N}, DType::I32};
  OwnedTensor dw1{Device::CPU, Shape{H, IN}}, db1{Device::CPU, Shape{H}}, dw2{Device::CPU, Shape{C, H}},
      db2{Device::CPU, Shape{C}};
  Mlp() {
    from_host(x.t, random_values(N * IN, 1));
    from_host(w1.t, random_values(H * IN, 2));
    from_host(b1.t, random_values(H, 3));
    from_host(w2.t, random_values(C * H, 4));
    from_host(b2.t, random_values(C, 5));
    from_host(labels.t, std::vector<int32_t>{2, 0, 1});
    for (const Tensor& t : {dw1.t, db1.t, dw2.t, db2.t}) fill_zero(t);
  }
  Var* loss(Graph& g) {
    Var* in = g.input(x.t, "x");
    Var* h = ops::relu(g, ops::linear(g, in, g.param(w1.t, dw1.t, "fc1"), g.param(b1.t, db1.t, "fc1.bias")));
    Var* logits = ops::linear(g, h, g.param(w2.t, dw2.t, "fc2"), g.param(b2.t, db2.t, "fc2.bias"));
    return ops::cross_entropy(g, logits, labels.t);
  }
};

TEST(Autograd, MlpMatchesHandDerivedGradients) {
  Mlp m;
  Workspace ws(Device::CPU);
  Graph g(ws);
  Var* loss = m.loss(g);
  g.backward(loss);

  // The same network in double, forward and backward written out by hand.
  const auto x = to_host_f32(m.x.t), w1 = to_host_f32(m.w1.t), b1 = to_host_f32(m.b1.t),
             w2 = to_host_f32(m.w2.t), b2 = to_host_f32(m.b2.t);
  const auto labels = to_host_i32(m.labels.t);
  std::vector<double> pre(N * H), hid(N * H), dw1(H * IN, 0), db1(H, 0), dw2(C * H, 0), db2(C, 0);
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < H; ++j) {
      double s = b1[j];
      for (int64_t k = 0; k < IN; ++k) s += static_cast<double>(x[i * IN + k]) * w1[j * IN + k];
      pre[i * H + j] = s;
      hid[i * H + j] = s > 0 ? s : 0;
    }
    std::vector<double> logit(C);
    double m_max = -1e300;
    for (int64_t c = 0; c < C; ++c) {
      double s = b2[c];
      for (int64_t j = 0; j < H; ++j) s += hid[i * H + j] * w2[c * H + j];
      logit[c] = s;
      m_max = std::max(m_max, s);
    }
    double z = 0;
    for (double l : logit) z += std::exp(l - m_max);
    const double lse = m_max + std::log(z);
    total += lse - logit[labels[i]];
    // d loss / d logit = (softmax - onehot) / N, then back through both layers.
    std::vector<double> dh(H, 0);
    for (int64_t c = 0; c < C; ++c) {
      const double dl = (std::exp(logit[c] - lse) - (c == labels[i] ? 1 : 0)) / N;
      db2[c] += dl;
      for (int64_t j = 0; j < H; ++j) {
        dw2[c * H + j] += dl * hid[i * H + j];
        dh[j] += dl * w2[c * H + j];
      }
    }
    for (int64_t j = 0; j < H; ++j) {
      const double dpre = pre[i * H + j] > 0 ? dh[j] : 0;
      db1[j] += dpre;
      for (int64_t k = 0; k < IN; ++k) dw1[j * IN + k] += dpre * x[i * IN + k];
    }
  }
  EXPECT_NEAR(to_host_f32(loss->value)[0], total / N, 1e-5);
  auto expect_close = [](const Tensor& got, const std::vector<double>& want, const char* what) {
    const std::vector<float> g = to_host_f32(got);
    ASSERT_EQ(g.size(), want.size());
    double largest = 0;
    int bad = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      // Float32 forward and backward against double: 1e-5 is ~100 ulps of these O(0.1) values.
      if (std::fabs(g[i] - want[i]) > 1e-5 && bad++ < 3)
        ADD_FAILURE() << what << "[" << i << "]: engine " << g[i] << ", by hand " << want[i];
      largest = std::max(largest, std::fabs(want[i]));
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << g.size() << " elements differ";
    EXPECT_GT(largest, 1e-3) << what << " is all zero: the comparison would prove nothing";
  };
  expect_close(m.dw1.t, dw1, "d fc1.weight");
  expect_close(m.db1.t, db1, "d fc1.bias");
  expect_close(m.dw2.t, dw2, "d fc2.weight");
  expect_close(m.db2.t, db2, "d fc2.bias");
}

// Two backward passes without zeroing add up: gradients accumulate, never overwrite.
TEST(Autograd, GradientsAccumulateAcrossBackwardPasses) {
  Mlp m;
  Workspace ws(Device::CPU);
  Graph g(ws);
  g.backward(m.loss(g));
  const std::vector<float> once = to_host_f32(m.dw2.t);
  g.clear();
  ws.reset();
  g.backward(m.loss(g));
  const std::vector<float> twice = to_host_f32(m.dw2.t);
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-6f) << i;
}

// A gradient's first contribution is written over whatever its workspace block held
// (Graph::grad_to_write), later ones add to it: the block starts as NaN, so a first kernel that
// added instead of writing, or a later one that wrote instead of adding, shows.
TEST(Autograd, FirstGradientContributionIsWrittenLaterOnesAdd) {
  Workspace ws(Device::CPU, size_t{1} << 16);
  ws.poison();
  OwnedTensor x(Device::CPU, Shape{2, 8}), dx(Device::CPU, Shape{2, 8});
  std::vector<float> xs(16);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<float>(i % 3) - 0.75f;  // both signs
  from_host(x.t, xs);
  fill_zero(dx.t);
  Graph g(ws);
  Var* h = ops::scale(g, g.param(x.t, dx.t, "x"), 1.0f);  // h's gradient: a workspace block
  Var* y = ops::add(g, ops::relu(g, h), ops::scale(g, h, 2.0f));
  g.backward(ops::sum(g, y));
  const std::vector<float> got = to_host_f32(dx.t);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(got[i], (xs[i] > 0 ? 1.0f : 0.0f) + 2.0f) << i;  // relu' + 2
  EXPECT_EQ(ws.spills(), 0) << "the graph outgrew the poisoned block: the test would not test";
}

// add's backward passes dy to both inputs unchanged: b gets it written or added, a takes over
// dy's buffer itself where it has no gradient yet and nothing reads y's afterwards
// (Graph::take_over_grad), one pass over the tensor fewer. A probe node between add and its
// consumer sees y's gradient buffer before the add's backward runs, and may not take it.
TEST(Autograd, AddHandsItsOutputGradientBufferToItsFirstInput) {
  OwnedTensor x(Device::CPU, Shape{2, 8}), dx(Device::CPU, Shape{2, 8});
  from_host(x.t, random_values(16, 12));
  for (bool keep_y : {false, true}) {
    SCOPED_TRACE(keep_y ? "y kept" : "y released");
    fill_zero(dx.t);
    Workspace ws(Device::CPU);
    ws.poison();
    Graph g(ws);
    Var* xv = g.param(x.t, dx.t, "x");
    Var* a = ops::scale(g, xv, 2.0f);
    Var* b = ops::scale(g, xv, 3.0f);
    Var* y = ops::add(g, a, b);
    EXPECT_FALSE(g.take_over_grad(a, y)) << "outside backward";
    const void* dy = nullptr;
    bool probe_took = true;
    g.record("probe", "probe", [&] {
      dy = y->grad.ptr;
      probe_took = g.take_over_grad(a, y);  // y is not released after this node, but after add's
    });
    g.keep(a), g.keep(b);
    if (keep_y) g.keep(y);
    g.backward(ops::sum(g, ops::scale(g, y, 5.0f)));
    ASSERT_NE(dy, nullptr);
    EXPECT_FALSE(probe_took);
    EXPECT_EQ(a->grad.ptr == dy, !keep_y) << "a takes y's buffer unless y is kept";
    EXPECT_NE(b->grad.ptr, dy);
    for (float v : to_host_f32(a->grad)) EXPECT_EQ(v, 5.0f);
    for (float v : to_host_f32(b->grad)) EXPECT_EQ(v, 5.0f);
    if (keep_y) {
      for (float v : to_host_f32(y->grad)) EXPECT_EQ(v, 5.0f);
    }
    for (float v : to_host_f32(dx.t)) EXPECT_EQ(v, 25.0f);  // 2 * 5 + 3 * 5
  }
  // x + x: a's gradient exists when its turn comes (b's contribution), so it adds.
  fill_zero(dx.t);
  Workspace ws(Device::CPU);
  ws.poison();
  Graph g(ws);
  Var* a = ops::scale(g, g.param(x.t, dx.t, "x"), 2.0f);
  g.backward(ops::sum(g, ops::add(g, a, a)));
  for (float v : to_host_f32(dx.t)) EXPECT_EQ(v, 4.0f);
}

TEST(Autograd, NoGradScopeRecordsNothing) {
  Mlp m;
  Workspace ws(Device::CPU);
  Graph g(ws);
  {
    NoGradScope no_grad(g);
    Var* loss = m.loss(g);
    EXPECT_EQ(g.tape_size(), 0u);
    EXPECT_FALSE(loss->requires_grad);
    EXPECT_THROW(g.backward(loss), Error);
  }
  // Restored on exit: the same forward records linear, relu, linear, cross_entropy.
  Var* loss = m.loss(g);
  EXPECT_EQ(g.tape_size(), 4u);
  EXPECT_TRUE(loss->requires_grad);
}

TEST(Autograd, InputsWithoutGradGetNone) {
  Mlp m;
  Workspace ws(Device::CPU);
  Graph g(ws);
  Var* x = g.input(m.x.t, "x");
  Var* w = g.param(m.w1.t, m.dw1.t, "w");
  Var* loss = ops::sum(g, ops::linear(g, x, w, nullptr));
  g.backward(loss);
  EXPECT_FALSE(x->grad.defined());  // no dx was computed, no buffer was even allocated
  // d sum(x w^T) / d w[j, k] = sum_i x[i, k]
  const std::vector<float> xs = to_host_f32(m.x.t), dw = to_host_f32(m.dw1.t);
  for (int64_t j = 0; j < H; ++j)
    for (int64_t k = 0; k < IN; ++k) {
      float col = 0;
      for (int64_t i = 0; i < N; ++i) col += xs[i * IN + k];
      EXPECT_NEAR(dw[j * IN + k], col, 1e-6f);
    }
}

// flatten is a view: no copy, no tape node, and the gradient lands in x's buffer.
TEST(Autograd, FlattenIsAViewSharingTheGradient) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{2, 3, 2, 2}), dx(Device::CPU, Shape{2, 3, 2, 2});
  from_host(x.t, random_values(24, 9));
  fill_zero(dx.t);
  Var* xv = g.param(x.t, dx.t, "x");
  Var* flat = ops::flatten(g, xv);
  EXPECT_EQ(flat->value.shape, (Shape{2, 12}));
  EXPECT_EQ(flat->value.ptr, x.t.ptr);
  EXPECT_EQ(g.tape_size(), 0u);
  g.backward(ops::scale(g, ops::sum(g, flat), 3.0f));
  for (float v : to_host_f32(dx.t)) EXPECT_FLOAT_EQ(v, 3.0f);
}

}  // namespace
}  // namespace tessera
