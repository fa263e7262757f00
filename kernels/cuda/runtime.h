// The handles every CUDA kernel shares: one stream, one cuBLAS and one cuDNN handle, made
// once by the engine's device context (engine/device.cpp) and bound to that stream. Kernels
// launch on runtime().stream and never synchronise; the engine decides when to wait.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdint>

namespace kernels::cuda {

struct Runtime {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cudnnHandle_t cudnn = nullptr;
  int sm_count = 0;
  // How convolutions may compute, set by the engine (engine/device.h, CudaOptions) before
  // the first convolution: cuDNN plans are cached per shape and per these two settings.
  bool conv_tf32 = true;      // TF32 tensor cores allowed (PyTorch's default for convolutions)
  bool deterministic = true;  // deterministic cuDNN algorithms only (kernels/common/conv_algo.h)
};

Runtime& runtime();

// Grid size for a grid-stride loop over n elements with `threads` per block.
inline unsigned grid_for(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = 65535LL * 8;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace kernels::cuda
