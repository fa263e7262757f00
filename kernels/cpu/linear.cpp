// CPU reference of kernels/linear.h: OpenBLAS row-major sgemm for the three products (the
// openmp build of OpenBLAS shares the engine's OpenMP threads), OpenMP loops for the bias.
#include "kernels/linear.h"

#include <cblas.h>

#include <algorithm>

namespace kernels::cpu {

namespace {
// BLAS takes int dimensions; the engine's launchers keep sizes well below 2^31.
int blas_int(int64_t v) { return static_cast<int>(v); }
}  // namespace

void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t in,
                    int64_t out) {
  if (n == 0 || out == 0) return;
  // y starts as the bias broadcast over rows (or zero) and the GEMM adds x w^T onto it.
  float beta = 0.0f;
  if (b) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) std::copy(b, b + out, y + i * out);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blas_int(n), blas_int(out), blas_int(in), 1.0f, x,
              blas_int(in), w, blas_int(in), beta, y, blas_int(out));
}

void linear_backward_input(const float* dy, const float* w, float* dx, int64_t n, int64_t in, int64_t out) {
  if (n == 0 || in == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blas_int(n), blas_int(in), blas_int(out), 1.0f, dy,
              blas_int(out), w, blas_int(in), 1.0f, dx, blas_int(in));
}

void linear_backward_weight(const float* dy, const float* x, float* dw, int64_t n, int64_t in, int64_t out) {
  if (out == 0 || in == 0) return;
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blas_int(out), blas_int(in), blas_int(n), 1.0f, dy,
              blas_int(out), x, blas_int(in), 1.0f, dw, blas_int(in));
}

void linear_backward_bias(const float* dy, float* db, int64_t n, int64_t out) {
  // Each thread owns a block of columns and walks the rows, so reads stay sequential.
  constexpr int64_t kColumns = 64;
#pragma omp parallel for schedule(static)
  for (int64_t o0 = 0; o0 < out; o0 += kColumns) {
    const int64_t o1 = std::min(out, o0 + kColumns);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = o0; o < o1; ++o) db[o] += dy[i * out + o];
  }
}

}  // namespace kernels::cpu
