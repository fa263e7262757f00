// The CPU fast tier's linear-layer gradients (kernels/onednn/linear.cpp, oneDNN's sgemm) against
// the reference's (kernels/cpu/linear.cpp, OpenBLAS) on the heads' shapes and odd ones, added into
// buffers that already hold values, as every backward does. Tolerance: tests/fast_tier_compare.h,
// over what was added. A wrong transpose or a lost accumulation is off by order 1.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/check.h"
#include "kernels/common/philox.h"
#include "kernels/linear.h"
#include "tests/fast_tier_compare.h"

namespace tessera {
namespace {

#if TESSERA_ONEDNN

std::vector<float> uniform(size_t n, uint64_t step) {
  std::vector<float> v(n);
  kernels::PhiloxState rng(37, kernels::philox_subsequence(kernels::kStreamTest, step), 0);
  for (float& x : v) x = 2.0f * rng.uniform() - 1.0f;
  return v;
}

using testing::relative_error;
using testing::sum_tolerance;

TEST(LinearFast, GradientsMatchTheReference) {
  struct Shape {
    int64_t n, in, out;
  };
  // The BYOL demo's projector and predictor layers (batch 128, 128 <-> 1024), a classifier head,
  // one sample, and sizes that fit no vector width.
  uint64_t seed = 500;
  for (const Shape s : {Shape{128, 128, 1024}, Shape{128, 1024, 128}, Shape{224, 128, 10}, Shape{1, 7, 3},
                        Shape{13, 33, 17}}) {
    SCOPED_TRACE(cat("n ", s.n, " in ", s.in, " out ", s.out));
    const std::vector<float> dy = uniform(size_t(s.n * s.out), seed++), w = uniform(size_t(s.out * s.in), seed++),
                             x = uniform(size_t(s.n * s.in), seed++), dx0 = uniform(size_t(s.n * s.in), seed++),
                             dw0 = uniform(size_t(s.out * s.in), seed++);
    std::vector<float> dx_ref = dx0, dx_fast = dx0, dw_ref = dw0, dw_fast = dw0;
    kernels::cpu::linear_backward_input(dy.data(), w.data(), dx_ref.data(), s.n, s.in, s.out);
    kernels::onednn::linear_backward_input(dy.data(), w.data(), dx_fast.data(), s.n, s.in, s.out);
    kernels::cpu::linear_backward_weight(dy.data(), x.data(), dw_ref.data(), s.n, s.in, s.out);
    kernels::onednn::linear_backward_weight(dy.data(), x.data(), dw_fast.data(), s.n, s.in, s.out);
    const double dx_err = relative_error(dx_fast, dx_ref, &dx0), dw_err = relative_error(dw_fast, dw_ref, &dw0);
    EXPECT_LE(dx_err, sum_tolerance(double(s.out))) << "dx, " << s.out << " terms per element";
    EXPECT_LE(dw_err, sum_tolerance(double(s.n))) << "dw, " << s.n << " terms per element";
  }
}

#else  // no oneDNN in this build

TEST(LinearFast, NotBuilt) { GTEST_SKIP() << "built without oneDNN (ONEDNN=0): no fast tier to compare"; }

#endif

}  // namespace
}  // namespace tessera
