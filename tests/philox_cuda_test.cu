// cuRAND's own device Philox, as the oracle for tests/philox_test.cpp, and the stateless
// draw of kernels/common/philox.h compiled for the device beside it.
#include <curand_kernel.h>

#include <cstdint>

#include "kernels/common/philox.h"
#include "kernels/cuda/check.h"

namespace {
__global__ void draw(uint64_t seed, uint64_t sub, uint64_t off, int n, uint32_t* words, float* uniforms,
                     uint32_t* four) {
  curandStatePhilox4_32_10_t a, b, c;
  curand_init(seed, sub, off, &a);
  curand_init(seed, sub, off, &b);
  curand_init(seed, sub, off, &c);
  for (int i = 0; i < n; ++i) {
    words[i] = curand(&a);
    uniforms[i] = curand_uniform(&b);
  }
  uint4 f = curand4(&c);
  four[0] = f.x;
  four[1] = f.y;
  four[2] = f.z;
  four[3] = f.w;
}

// Per index: the teacher kernel's stateless draw (philox_uniform_at, compiled for the device)
// and cuRAND's curand_uniform after curand_init at that offset.
__global__ void draw_at(uint64_t seed, uint64_t sub, const uint64_t* index, int n, float* ours, float* theirs) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  ours[i] = kernels::philox_uniform_at(seed, sub, index[i]);
  curandStatePhilox4_32_10_t s;
  curand_init(seed, sub, index[i], &s);
  theirs[i] = curand_uniform(&s);
}
}  // namespace

void device_draws_at(uint64_t seed, uint64_t subsequence, const uint64_t* index, int n, float* ours,
                     float* theirs) {
  uint64_t* di;
  float *d_ours, *d_theirs;
  CUDA_CHECK(cudaMalloc(&di, n * sizeof(uint64_t)));
  CUDA_CHECK(cudaMalloc(&d_ours, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_theirs, n * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(di, index, n * sizeof(uint64_t), cudaMemcpyHostToDevice));
  draw_at<<<(n + 255) / 256, 256>>>(seed, subsequence, di, n, d_ours, d_theirs);
  KERNEL_LAUNCH_CHECK();
  CUDA_CHECK(cudaMemcpy(ours, d_ours, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(theirs, d_theirs, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(di));
  CUDA_CHECK(cudaFree(d_ours));
  CUDA_CHECK(cudaFree(d_theirs));
}

void curand_reference(uint64_t seed, uint64_t subsequence, uint64_t offset, int n, uint32_t* words,
                      float* uniforms, uint32_t* four) {
  uint32_t *dw, *df;
  float* du;
  CUDA_CHECK(cudaMalloc(&dw, n * sizeof(uint32_t)));
  CUDA_CHECK(cudaMalloc(&du, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&df, 4 * sizeof(uint32_t)));
  draw<<<1, 1>>>(seed, subsequence, offset, n, dw, du, df);
  KERNEL_LAUNCH_CHECK();
  CUDA_CHECK(cudaMemcpy(words, dw, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(uniforms, du, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(four, df, 4 * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dw));
  CUDA_CHECK(cudaFree(du));
  CUDA_CHECK(cudaFree(df));
}
