// cuRAND's own device Philox, as the oracle for tests/philox_test.cpp.
#include <curand_kernel.h>

#include <cstdint>

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
}  // namespace

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
