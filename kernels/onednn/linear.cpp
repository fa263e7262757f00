// CPU fast tier of kernels/linear.h: the data and weight gradients of the linear layer on
// oneDNN's sgemm (row-major dnnl_sgemm, on the engine's OpenMP threads), the reference's GEMMs
// with the same operands and beta = 1 (gradients accumulate):
//
//   dx (n, in)   += dy (n, out) w (out, in)       no transposes
//   dw (out, in) += dy^T (out, n) x (n, in)       dy transposed
//
// Cost: 2 n in out flops each. Why: oneDNN's sgemm ran these two forms 1.2-1.5x faster than
// OpenBLAS 0.3.21 (SkylakeX kernels) on the BYOL heads' shapes (n 128, 128 <-> 1024), 2
// threads, where the two gradients were 8% of the demo's step (bench/RESULTS.md, "linear").
// The forward's x w^T (w transposed) was not faster at IN = 1024 (0.56 against 0.29 ms), so
// it stays on the reference. Same sums in another blocking: results agree with OpenBLAS's to
// float rounding (tests/linear_fast_test.cpp).
#include <oneapi/dnnl/dnnl.hpp>

#include "kernels/linear.h"

namespace kernels::onednn {

void linear_backward_input(const float* dy, const float* w, float* dx, int64_t n, int64_t in, int64_t out) {
  if (n == 0 || in == 0) return;
  dnnl::sgemm('N', 'N', n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
}

void linear_backward_weight(const float* dy, const float* x, float* dw, int64_t n, int64_t in, int64_t out) {
  if (out == 0 || in == 0) return;
  dnnl::sgemm('T', 'N', out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace kernels::onednn
