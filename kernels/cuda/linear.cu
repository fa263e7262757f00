// CUDA twin of kernels/linear.h. cuBLAS is column-major, so each row-major product is
// written as the column-major product of the transposes (a row-major (R, C) matrix is a
// column-major (C, R) one):
//   y^T  (out, n) = w (out, in) x^T (in, n)      -> sgemm(T, N, out, n, in)
//   dx^T (in, n) += w^T (in, out) dy^T (out, n)  -> sgemm(N, N, in, n, out)
//   dw^T (in, out) += x^T (in, n) dy (n, out)    -> sgemm(N, T, in, out, n)
// The bias broadcast and the bias gradient's column sums are hand-written kernels.
// Cost: kernels/linear.h. Tests: tests/ops_basic_test.cpp (CUDA vs CPU), tests/cuda_review_test.cpp.
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/linear.h"

namespace kernels::cuda {

namespace {

int blas_int(int64_t v) { return static_cast<int>(v); }

// y[i, o] = b[o].  b (out), y (n, out). Rows are planes on the grid (plane_launch): a 32-bit
// column index and no `i % out` (a 64-bit remainder per element before).
__global__ void broadcast_rows_kernel(const float* __restrict__ b, float* __restrict__ y, int64_t n, int out) {
  for (int64_t row = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; row < n; row += int64_t(gridDim.y) * blockDim.y) {
    float* yr = y + row * out;
    for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < out; o += gridDim.x * blockDim.x) yr[o] = b[o];
  }
}

// Column sums of dy (n, out): a block of 32 x 8 threads owns 32 adjacent columns (coalesced
// reads along a row); its 8 thread rows stride over the n rows and are summed in shared memory.
constexpr int kBiasColumns = 32, kBiasRows = 8;
__global__ void bias_grad_kernel(const float* dy, float* db, int64_t n, int64_t out) {
  __shared__ float partial[kBiasRows][kBiasColumns + 1];
  const int64_t o = blockIdx.x * int64_t(kBiasColumns) + threadIdx.x;
  float acc = 0.0f;
  if (o < out)
    for (int64_t i = threadIdx.y; i < n; i += kBiasRows) acc += dy[i * out + o];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && o < out) {
    float total = 0.0f;
    for (int r = 0; r < kBiasRows; ++r) total += partial[r][threadIdx.x];
    db[o] += total;
  }
}

}  // namespace

void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t in,
                    int64_t out) {
  if (n == 0 || out == 0) return;
  float beta = 0.0f;
  if (b) {
    const PlaneLaunch l = plane_launch(n, out, "linear_forward (bias)");
    broadcast_rows_kernel<<<l.grid, l.block, 0, runtime().stream>>>(b, y, n, static_cast<int>(out));
    KERNEL_LAUNCH_CHECK();
    beta = 1.0f;
  }
  const float alpha = 1.0f;
  CUBLAS_CHECK(cublasSgemm(runtime().cublas, CUBLAS_OP_T, CUBLAS_OP_N, blas_int(out), blas_int(n), blas_int(in),
                           &alpha, w, blas_int(in), x, blas_int(in), &beta, y, blas_int(out)));
}

void linear_backward_input(const float* dy, const float* w, float* dx, int64_t n, int64_t in, int64_t out) {
  if (n == 0 || in == 0) return;
  const float alpha = 1.0f, beta = 1.0f;
  CUBLAS_CHECK(cublasSgemm(runtime().cublas, CUBLAS_OP_N, CUBLAS_OP_N, blas_int(in), blas_int(n), blas_int(out),
                           &alpha, w, blas_int(in), dy, blas_int(out), &beta, dx, blas_int(in)));
}

void linear_backward_weight(const float* dy, const float* x, float* dw, int64_t n, int64_t in, int64_t out) {
  if (out == 0 || in == 0) return;
  const float alpha = 1.0f, beta = 1.0f;
  CUBLAS_CHECK(cublasSgemm(runtime().cublas, CUBLAS_OP_N, CUBLAS_OP_T, blas_int(in), blas_int(out), blas_int(n),
                           &alpha, x, blas_int(in), dy, blas_int(out), &beta, dw, blas_int(in)));
}

void linear_backward_bias(const float* dy, float* db, int64_t n, int64_t out) {
  if (out == 0) return;
  const dim3 block(kBiasColumns, kBiasRows);
  const unsigned blocks = static_cast<unsigned>((out + kBiasColumns - 1) / kBiasColumns);
  bias_grad_kernel<<<blocks, block, 0, runtime().stream>>>(dy, db, n, out);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
