// Backend-ops cases for batch_norm1d / batch_norm2d (engine/ops_norm.cpp), train and eval.
// The running statistics and the batch counter are case buffers, so the CUDA comparison
// checks them too. Plain tests pin the running-statistics update to its formula.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "kernels/batch_norm.h"
#include "tests/op_case.h"

namespace tessera::testing {
namespace {

OpCase bn_case(const char* name, Shape x, bool train, float momentum, float running_mean, float running_var) {
  OpCase c;
  c.name = name;
  const int64_t ch = x[1];
  c.inputs = {InputSpec{x}, InputSpec{Shape{ch}, InputSpec::Uniform, true, 0.5f, 1.5f},
              InputSpec{Shape{ch}}};
  c.build = [x, ch, train, momentum, running_mean, running_var](CaseContext& k) {
    ops::BatchNormBuffers buf{k.buffer(Shape{ch}, running_mean), k.buffer(Shape{ch}, running_var),
                              k.buffer(Shape{1}, 0.0f)};
    ops::BatchNormOptions opt;
    opt.train = train;
    opt.momentum = momentum;
    return x.ndim == 2 ? ops::batch_norm1d(k.g, k.in[0], k.in[1], k.in[2], buf, opt)
                       : ops::batch_norm2d(k.g, k.in[0], k.in[1], k.in[2], buf, opt);
  };
  return c;
}

}  // namespace

TS_OP_CASES(norm_cases) {
  return {
      bn_case("batch_norm2d_train", Shape{4, 3, 5, 5}, true, 0.1f, 0.2f, 0.8f),
      bn_case("batch_norm2d_train_momentum_0_001", Shape{3, 2, 3, 7}, true, 0.001f, -0.3f, 1.5f),
      bn_case("batch_norm2d_eval", Shape{4, 3, 5, 5}, false, 0.1f, 0.1f, 0.7f),
      bn_case("batch_norm1d_train", Shape{8, 5}, true, 0.1f, 0.0f, 1.0f),
      bn_case("batch_norm1d_eval", Shape{6, 4}, false, 0.1f, -0.2f, 1.3f),
      // More channels than one block of the CPU kernel's loop (16), ragged last block.
      bn_case("batch_norm1d_train_37_channels", Shape{6, 37}, true, 0.1f, 0.1f, 0.9f),
      bn_case("batch_norm2d_train_21_channels_2x2", Shape{3, 21, 2, 2}, true, 0.1f, 0.0f, 1.0f),
      bn_case("batch_norm2d_eval_19_channels", Shape{2, 19, 1, 3}, false, 0.1f, 0.2f, 1.1f),
  };
}

namespace {

struct BnRun {
  Workspace ws{Device::CPU};
  OwnedTensor x, gamma, beta, mean, var, count;
  Graph g{ws};  // after the tensors: destroyed first, it may still add to `count`
  std::vector<float> xs;
  BnRun(int64_t n, int64_t c, int64_t hw)
      : x(Device::CPU, Shape{n, c, 1, hw}), gamma(Device::CPU, Shape{c}), beta(Device::CPU, Shape{c}),
        mean(Device::CPU, Shape{c}), var(Device::CPU, Shape{c}), count(Device::CPU, Shape{1}) {
    xs.resize(static_cast<size_t>(n * c * hw));
    for (size_t i = 0; i < xs.size(); ++i) xs[i] = std::sin(0.37f * static_cast<float>(i)) * 2.0f + 0.5f;
    from_host(x.t, xs);
    fill_value(gamma.t, 1.0f);
    fill_zero(beta.t);
    fill_value(mean.t, 0.5f);
    fill_value(var.t, 2.0f);
    fill_zero(count.t);
  }
  Var* run(bool train, float momentum) {
    ops::BatchNormOptions opt;
    opt.train = train;
    opt.momentum = momentum;
    return ops::batch_norm2d(g, g.input(x.t), g.input(gamma.t), g.input(beta.t), {mean.t, var.t, count.t}, opt);
  }
};

}  // namespace

TEST(BatchNorm, TrainUpdatesRunningStatisticsWithUnbiasedVariance) {
  const int64_t n = 3, c = 2, hw = 5;
  BnRun r(n, c, hw);
  {
    NoGradScope no_grad(r.g);  // a teacher's forward: no tape, running statistics still move
    r.run(true, 0.1f);
  }
  const std::vector<float> mean = to_host_f32(r.mean.t), var = to_host_f32(r.var.t);
  for (int64_t ch = 0; ch < c; ++ch) {
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p) s += r.xs[static_cast<size_t>((i * c + ch) * hw + p)];
    const double m = static_cast<double>(n * hw), batch_mean = s / m;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p) {
        const double d = r.xs[static_cast<size_t>((i * c + ch) * hw + p)] - batch_mean;
        ss += d * d;
      }
    EXPECT_NEAR(mean[static_cast<size_t>(ch)], 0.9 * 0.5 + 0.1 * batch_mean, 1e-6);
    EXPECT_NEAR(var[static_cast<size_t>(ch)], 0.9 * 2.0 + 0.1 * ss / (m - 1), 1e-6);
  }
  // num_batches_tracked: the graph adds the step's counts when it is cleared (or runs
  // backward, or is destroyed), one launch for every layer.
  EXPECT_EQ(to_host_f32(r.count.t)[0], 0.0f);
  r.g.clear();
  EXPECT_EQ(to_host_f32(r.count.t)[0], 1.0f);
  r.run(true, 0.1f);
  r.run(true, 0.1f);
  r.g.clear();
  EXPECT_EQ(to_host_f32(r.count.t)[0], 3.0f);
}

TEST(BatchNorm, EvalUsesRunningStatisticsAndLeavesThemAlone) {
  BnRun r(2, 2, 3);
  Var* y = r.run(false, 0.1f);
  const std::vector<float> out = to_host_f32(y->value);
  for (size_t i = 0; i < out.size(); ++i)
    EXPECT_NEAR(out[i], (r.xs[i] - 0.5) / std::sqrt(2.0 + 1e-5), 1e-6);
  EXPECT_EQ(to_host_f32(r.mean.t)[0], 0.5f);
  EXPECT_EQ(to_host_f32(r.var.t)[1], 2.0f);
  EXPECT_EQ(to_host_f32(r.count.t)[0], 0.0f);
}

TEST(BatchNorm, ErrorsNameTheLayerAndShapes) {
  BnRun r(1, 2, 1);  // one value per channel
  EXPECT_THROW(r.run(true, 0.1f), Error);
  OwnedTensor wrong(Device::CPU, Shape{3});
  ops::BatchNormOptions opt;
  try {
    ops::batch_norm2d(r.g, r.g.input(r.x.t), r.g.input(wrong.t, "bn1.weight"), r.g.input(r.beta.t),
                      {r.mean.t, r.var.t, r.count.t}, opt);
    FAIL() << "gamma of the wrong size accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("bn1.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("(3)"), std::string::npos) << m;
  }
  EXPECT_THROW(ops::batch_norm1d(r.g, r.g.input(r.x.t), r.g.input(r.gamma.t), r.g.input(r.beta.t),
                                 {r.mean.t, r.var.t, r.count.t}, opt),
               Error);  // 4-D input to the 1-d op
}

// The CPU kernels straight, on the shapes that matter for their loop order (HW = 1 with many
// channels: BatchNorm1d and 1x1 maps; small maps, element-wise, over more than one block of
// channels; a few channels with a larger map, row by row), against sums in double
// written out the plain way, at one and two threads: the channel blocks are shared among the
// threads but each channel's sums run in one order, so the two agree to the bit.
TEST(BatchNorm, CpuKernelsMatchThePlainSumsAtEveryThreadCount) {
  struct Case {
    int64_t n, c, hw;
  };
  for (const Case k : {Case{32, 1, 1}, Case{24, 40, 1}, Case{8, 17, 9}, Case{6, 70, 16}, Case{5, 3, 49},
                       Case{4, 8, 200}}) {
    SCOPED_TRACE(cat("n ", k.n, " c ", k.c, " hw ", k.hw));
    const size_t numel = static_cast<size_t>(k.n * k.c * k.hw), nc = static_cast<size_t>(k.c);
    std::vector<float> x(numel), dy(numel), gamma(nc), beta(nc);
    for (size_t i = 0; i < numel; ++i) {
      x[i] = std::sin(0.71f * static_cast<float>(i)) * 3.0f + 1.0f;
      dy[i] = std::cos(0.29f * static_cast<float>(i));
    }
    for (size_t ch = 0; ch < nc; ++ch) gamma[ch] = 0.5f + 0.1f * ch, beta[ch] = -0.2f * ch;
    struct Out {
      std::vector<float> y, rm, rv, mean, invstd, dx, dgamma, dbeta, y_eval, dx_eval;
    };
    auto run = [&](int threads) {
      Out o{std::vector<float>(numel), std::vector<float>(nc, 0.5f), std::vector<float>(nc, 2.0f),
            std::vector<float>(nc), std::vector<float>(nc), std::vector<float>(numel, 1.0f),
            std::vector<float>(nc, 1.0f), std::vector<float>(nc, 1.0f), std::vector<float>(numel),
            std::vector<float>(numel, 7.0f)};
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      kernels::cpu::batch_norm_forward_train(x.data(), gamma.data(), beta.data(), o.y.data(), o.rm.data(),
                                             o.rv.data(), o.mean.data(), o.invstd.data(), k.n, k.c, k.hw, 0.1f,
                                             1e-5f, nullptr);
      // dx, dgamma added into (they start at 1); the eval backward overwrites dx (it starts at 7)
      kernels::cpu::batch_norm_backward_train(x.data(), dy.data(), gamma.data(), o.mean.data(), o.invstd.data(),
                                              o.dx.data(), o.dgamma.data(), o.dbeta.data(), k.n, k.c, k.hw, 1e-5f,
                                              kernels::kBnAccumulateDx | kernels::kBnAccumulateDgamma, nullptr);
      kernels::cpu::batch_norm_forward_eval(x.data(), gamma.data(), beta.data(), o.rm.data(), o.rv.data(),
                                            o.y_eval.data(), k.n, k.c, k.hw, 1e-5f);
      std::vector<float> g2(nc), b2(nc);
      kernels::cpu::batch_norm_backward_eval(x.data(), dy.data(), gamma.data(), o.rm.data(), o.rv.data(),
                                             o.dx_eval.data(), g2.data(), b2.data(), k.n, k.c, k.hw, 1e-5f, 0,
                                             nullptr);
      omp_set_num_threads(saved);
      return o;
    };
    const Out one = run(1), two = run(2);
    EXPECT_EQ(one.y, two.y);
    EXPECT_EQ(one.rv, two.rv);
    EXPECT_EQ(one.dx, two.dx);
    EXPECT_EQ(one.dgamma, two.dgamma);
    EXPECT_EQ(one.y_eval, two.y_eval);
    EXPECT_EQ(one.dx_eval, two.dx_eval);

    const double m = static_cast<double>(k.n * k.hw);
    auto at = [&](int64_t i, int64_t ch, int64_t p) { return static_cast<size_t>((i * k.c + ch) * k.hw + p); };
    for (int64_t ch = 0; ch < k.c; ++ch) {
      double s = 0, ss = 0, sdy = 0, sdyx = 0;
      for (int64_t i = 0; i < k.n; ++i)
        for (int64_t p = 0; p < k.hw; ++p) s += x[at(i, ch, p)];
      const double mean = s / m;
      for (int64_t i = 0; i < k.n; ++i)
        for (int64_t p = 0; p < k.hw; ++p) ss += (x[at(i, ch, p)] - mean) * (x[at(i, ch, p)] - mean);
      const double var = ss / m, invstd = 1.0 / std::sqrt(var + 1e-5);
      for (int64_t i = 0; i < k.n; ++i)
        for (int64_t p = 0; p < k.hw; ++p) {
          sdy += dy[at(i, ch, p)];
          sdyx += dy[at(i, ch, p)] * (x[at(i, ch, p)] - mean) * invstd;
        }
      const size_t c = static_cast<size_t>(ch);
      EXPECT_NEAR(two.mean[c], mean, 1e-5);
      EXPECT_NEAR(two.invstd[c], invstd, 1e-5 * invstd);
      EXPECT_NEAR(two.rv[c], 0.9 * 2.0 + 0.1 * var * m / (m - 1), 1e-5);
      EXPECT_NEAR(two.dgamma[c], 1.0 + sdyx, 1e-4);
      EXPECT_NEAR(two.dbeta[c], sdy, 1e-4);  // overwritten: its accumulate bit is clear
      const double scale_eval = gamma[c] / std::sqrt(two.rv[c] + 1e-5);
      for (int64_t i = 0; i < k.n; ++i)
        for (int64_t p = 0; p < k.hw; ++p) {
          const size_t e = at(i, ch, p);
          const double xhat = (x[e] - mean) * invstd;
          EXPECT_NEAR(two.y[e], gamma[c] * xhat + beta[c], 1e-4);
          const double dx = gamma[c] * invstd * (dy[e] - sdy / m - xhat * sdyx / m);
          EXPECT_NEAR(two.dx[e], 1.0 + dx, 1e-4);
          EXPECT_NEAR(two.y_eval[e], (x[e] - two.rm[c]) * scale_eval + beta[c], 1e-4);
          EXPECT_NEAR(two.dx_eval[e], scale_eval * dy[e], 1e-5);
        }
    }
  }
}

}  // namespace tessera::testing
