// Backend-ops cases for conv2d, max_pool2d and global_avg_pool (engine/ops_conv.cpp), and
// CPU tests the table cannot express: the chunked im2col path against a direct convolution,
// padding never winning a max, and the shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "kernels/conv.h"
#include "kernels/pool.h"
#include "tests/op_case.h"

namespace tessera::testing {
namespace {

struct ConvSpec {
  const char* name;
  int64_t n, c, h, w, o, k, stride, pad;
  bool bias;
};

OpCase conv_case(const ConvSpec& s) {
  OpCase c;
  c.name = s.name;
  c.inputs = {InputSpec{Shape{s.n, s.c, s.h, s.w}}, InputSpec{Shape{s.o, s.c, s.k, s.k}}};
  if (s.bias) c.inputs.push_back(InputSpec{Shape{s.o}});
  const int stride = static_cast<int>(s.stride), pad = static_cast<int>(s.pad);
  c.build = [stride, pad](CaseContext& k) {
    return ops::conv2d(k.g, k.in[0], k.in[1], k.in.size() > 2 ? k.in[2] : nullptr, stride, pad);
  };
  return c;
}

}  // namespace

TS_OP_CASES(conv_cases) {
  std::vector<OpCase> cases;
  const ConvSpec convs[] = {
      // name                     n  c  h  w  o  k  s  p  bias
      {"conv2d_3x3_s1_p1_bias", 2, 3, 7, 7, 4, 3, 1, 1, true},
      {"conv2d_3x3_s2_p1", 2, 3, 9, 9, 5, 3, 2, 1, false},
      {"conv2d_3x3_s1_p0_1ch_odd", 3, 1, 7, 5, 2, 3, 1, 0, true},
      {"conv2d_3x3_s2_p0_even", 2, 2, 8, 8, 3, 3, 2, 0, false},
      {"conv2d_1x1_s1_p0_bias", 2, 4, 5, 5, 3, 1, 1, 0, true},
      {"conv2d_1x1_s2_p0", 2, 4, 7, 7, 6, 1, 2, 0, false},
      {"conv2d_7x7_s2_p3_stem", 1, 3, 11, 11, 4, 7, 2, 3, false},
      {"conv2d_7x7_s2_p3_1ch_bias", 2, 1, 9, 9, 2, 7, 2, 3, true},
      {"conv2d_1x1_s1_p1_pad_only", 1, 2, 3, 3, 2, 1, 1, 1, true},
      // 64 or more output pixels an image: the CPU kernel's per-image path (the rest: chunked)
      {"conv2d_3x3_s1_p1_8x8_per_image", 3, 2, 8, 8, 3, 3, 1, 1, true},
      {"conv2d_1x1_s1_p0_9x9_per_image", 2, 3, 9, 9, 2, 1, 1, 0, false},
  };
  for (const ConvSpec& s : convs) cases.push_back(conv_case(s));
  {
    // Max pooling: the derivative is 0 or 1 unless a step of eps changes the winner, so eps is
    // small (1e-3): inputs one eps apart in a window are rare at 81 uniform values a plane.
    OpCase c;
    c.name = "max_pool2d_3x3_s2_p1";
    c.inputs = {InputSpec{Shape{2, 3, 9, 9}}};
    c.eps = 1e-3f;
    c.build = [](CaseContext& k) { return ops::max_pool2d(k.g, k.in[0], 3, 2, 1); };
    cases.push_back(c);
  }
  {
    OpCase c;
    c.name = "max_pool2d_2x2_s2_p0_odd";
    c.inputs = {InputSpec{Shape{1, 2, 7, 5}}};
    c.eps = 1e-3f;
    c.build = [](CaseContext& k) { return ops::max_pool2d(k.g, k.in[0], 2, 2, 0); };
    cases.push_back(c);
  }
  {
    OpCase c;
    c.name = "global_avg_pool";
    c.inputs = {InputSpec{Shape{2, 3, 4, 5}}};
    c.build = [](CaseContext& k) { return ops::global_avg_pool(k.g, k.in[0]); };
    cases.push_back(c);
  }
  {
    OpCase c;  // 1x1 maps: the CPU kernel's copy
    c.name = "global_avg_pool_1x1";
    c.inputs = {InputSpec{Shape{3, 4, 1, 1}}};
    c.build = [](CaseContext& k) { return ops::global_avg_pool(k.g, k.in[0]); };
    cases.push_back(c);
  }
  return cases;
}

namespace {

std::vector<float> random_vector(size_t n, uint64_t seed) {
  kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, 7), 0);
  std::vector<float> v(n);
  for (float& x : v) x = 2.0f * rng.uniform() - 1.0f;
  return v;
}

// Direct convolution in double, the definition in kernels/conv.h written out.
void direct_conv(const kernels::Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w,
                 const std::vector<float>& dy, std::vector<double>& y, std::vector<double>& dx,
                 std::vector<double>& dw) {
  y.assign(static_cast<size_t>(s.n * s.o * s.ho * s.wo), 0.0);
  dx.assign(x.size(), 0.0);
  dw.assign(w.size(), 0.0);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t o = 0; o < s.o; ++o)
      for (int64_t i = 0; i < s.ho; ++i)
        for (int64_t j = 0; j < s.wo; ++j) {
          const size_t yi = static_cast<size_t>(((n * s.o + o) * s.ho + i) * s.wo + j);
          for (int64_t c = 0; c < s.c; ++c)
            for (int64_t u = 0; u < s.kh; ++u)
              for (int64_t v = 0; v < s.kw; ++v) {
                const int64_t r = i * s.stride - s.pad + u, q = j * s.stride - s.pad + v;
                if (r < 0 || r >= s.h || q < 0 || q >= s.w) continue;
                const size_t xi = static_cast<size_t>(((n * s.c + c) * s.h + r) * s.w + q);
                const size_t wi = static_cast<size_t>(((o * s.c + c) * s.kh + u) * s.kw + v);
                y[yi] += static_cast<double>(w[wi]) * x[xi];
                dx[xi] += static_cast<double>(w[wi]) * dy[yi];
                dw[wi] += static_cast<double>(x[xi]) * dy[yi];
              }
        }
}

void expect_close(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= tol * std::max(1.0, std::fabs(want[i]))) && bad++ < 3)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off";
}

// The CPU kernel against a direct convolution on shapes big enough to reach the parts the
// small gradient-check cases do not: several threads' private filter gradients summed (per-image
// path), and several chunks with a short last one, offsets and dW accumulated across chunks
// (chunked path, 32 MiB of columns a chunk).
void check_against_direct(const kernels::Conv2dShape& s, bool expect_several_chunks) {
  const std::vector<float> x = random_vector(static_cast<size_t>(s.n * s.c * s.h * s.w), 1);
  const std::vector<float> w = random_vector(static_cast<size_t>(s.o * s.c * s.kh * s.kw), 2);
  const std::vector<float> dy = random_vector(static_cast<size_t>(s.n * s.o * s.ho * s.wo), 3);
  size_t bytes = 0;
  kernels::cpu::conv2d_workspace_size(s, kernels::ConvPass::Backward, &bytes);  // >= the forward's
  if (expect_several_chunks) {
    const size_t per_image = static_cast<size_t>((s.c * s.kh * s.kw + s.o) * s.ho * s.wo) * sizeof(float);
    ASSERT_LT(bytes, static_cast<size_t>(s.n) * per_image) << "the shape no longer spans several chunks";
  }
  std::vector<float> ws(bytes / sizeof(float) + 1), y(dy.size()), dx(x.size(), 0.5f), dw(w.size(), 0.25f);
  kernels::cpu::conv2d_forward(s, x.data(), w.data(), nullptr, y.data(), ws.data(), bytes);
  kernels::cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), nullptr,
                                /*accumulate_dx=*/true, ws.data(), bytes);
  // Overwriting: dx starts as NaN, which must never be read.
  std::vector<float> dx_set(x.size(), std::numeric_limits<float>::quiet_NaN());
  kernels::cpu::conv2d_backward(s, x.data(), w.data(), dy.data(), dx_set.data(), nullptr, nullptr,
                                /*accumulate_dx=*/false, ws.data(), bytes);
  std::vector<double> y_ref, dx_ref, dw_ref;
  direct_conv(s, x, w, dy, y_ref, dx_ref, dw_ref);
  // float32 sums of up to a few thousand products of values in [-1, 1]: relative error well
  // under 1e-4 of the larger of the result and 1.
  expect_close("dx written", dx_set, dx_ref, 1e-4);
  for (double& v : dx_ref) v += 0.5;  // the backward accumulates into what was there
  for (double& v : dw_ref) v += 0.25;
  expect_close("y", y, y_ref, 1e-4);
  expect_close("dx", dx, dx_ref, 1e-4);
  expect_close("dw", dw, dw_ref, 1e-4);
}

kernels::Conv2dShape shape(int64_t n, int64_t c, int64_t hw, int64_t o, int64_t k, int64_t stride, int64_t pad) {
  kernels::Conv2dShape s;
  s.n = n, s.c = c, s.h = s.w = hw, s.o = o, s.kh = s.kw = k, s.stride = stride, s.pad = pad;
  s.ho = s.wo = (hw + 2 * pad - k) / stride + 1;
  return s;
}

}  // namespace

TEST(ConvCpu, PerImagePathMatchesDirectConvolution) {
  check_against_direct(shape(7, 5, 17, 6, 3, 1, 1), false);  // 289 pixels an image, 7 images over the threads
}

TEST(ConvCpu, ChunkedPathMatchesDirectConvolution) {
  // 7x7 outputs, 2,891 rows of columns: 566 KiB an image, so 64 images make chunks of 59 and 5.
  check_against_direct(shape(64, 321, 7, 2, 3, 1, 1), true);
}

TEST(ConvOps, PaddingNeverWinsAMax) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{1, 2, 5, 5});
  std::vector<float> v(50);
  for (size_t i = 0; i < v.size(); ++i) v[i] = -1.0f - 0.01f * static_cast<float>(i);  // all negative
  from_host(x.t, v);
  Var* y = ops::max_pool2d(g, g.input(x.t), 3, 2, 1);
  const std::vector<float> out = to_host_f32(y->value);
  ASSERT_EQ(y->value.shape, (Shape{1, 2, 3, 3}));
  // Corner window (rows 0-1, cols 0-1 of plane 0): its largest element is x[0] = -1.
  EXPECT_EQ(out[0], -1.0f);
  for (float o : out) EXPECT_LT(o, 0.0f) << "a padding zero won the max";
}

// Equal values: the first element of the window in scan order (rows, then columns) wins, and
// the gradient goes to it alone, on both the clipped border windows and the inner ones.
TEST(ConvOps, MaxPoolTiesGoToTheFirstElementOfTheWindow) {
  std::vector<float> x(16, 2.0f), y(4), dx(16, 0.0f), dy(4, 1.0f);
  std::vector<int32_t> argmax(4);
  kernels::cpu::max_pool2d_forward(x.data(), y.data(), argmax.data(), 1, 4, 4, 2, 2, 3, 2, 1);
  EXPECT_EQ(argmax, (std::vector<int32_t>{0, 1, 4, 5}));  // windows from (0,0), (0,1), (1,0), (1,1)
  EXPECT_EQ(y, (std::vector<float>(4, 2.0f)));
  kernels::cpu::max_pool2d_backward(dy.data(), argmax.data(), dx.data(), 1, 4, 4, 2, 2, 3, 2, 1);
  std::vector<float> want(16, 0.0f);
  want[0] = want[1] = want[4] = want[5] = 1.0f;
  EXPECT_EQ(dx, want);
}

TEST(ConvOps, ShapeErrorsNameBothShapes) {
  Workspace ws(Device::CPU);
  Graph g(ws);
  OwnedTensor x(Device::CPU, Shape{2, 3, 8, 8}), w(Device::CPU, Shape{4, 5, 3, 3}), b(Device::CPU, Shape{3});
  Var* xv = g.input(x.t);
  try {
    ops::conv2d(g, xv, g.input(w.t, "layer1.0.conv1"), nullptr, 1, 1);
    FAIL() << "channel mismatch accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("layer1.0.conv1"), std::string::npos) << m;
    EXPECT_NE(m.find("(4, 5, 3, 3)"), std::string::npos) << m;
  }
  OwnedTensor w_ok(Device::CPU, Shape{4, 3, 3, 3}), w_big(Device::CPU, Shape{4, 3, 11, 11});
  EXPECT_THROW(ops::conv2d(g, xv, g.input(w_ok.t), g.input(b.t), 1, 1), Error);  // bias (3) for 4 outputs
  EXPECT_THROW(ops::conv2d(g, xv, g.input(w_big.t), nullptr, 1, 1), Error);      // kernel > padded input
  EXPECT_THROW(ops::conv2d(g, xv, g.input(w_ok.t), nullptr, 0, 1), Error);       // stride 0
  EXPECT_THROW(ops::max_pool2d(g, xv, 3, 2, 2), Error);                          // pad > kernel / 2
  EXPECT_THROW(ops::global_avg_pool(g, g.input(b.t)), Error);                    // not 4-D
}

}  // namespace tessera::testing
