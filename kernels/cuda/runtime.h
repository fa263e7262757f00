// The handles every CUDA kernel shares: one stream, one cuBLAS and one cuDNN handle, made
// once by the engine's device context (engine/device.cpp) and bound to that stream. Kernels
// launch on runtime().stream and never synchronise; the engine decides when to wait.
// Also here: the plane launch shape of the index-light kernels, and RAII streams and events.
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
  // How convolutions may compute, set by the engine (engine/device.h, CudaOptions) before
  // the first convolution: cuDNN plans are cached per shape and per these two settings.
  bool conv_tf32 = true;      // TF32 tensor cores allowed (PyTorch's default for convolutions)
  bool deterministic = true;  // deterministic cuDNN algorithms only (kernels/common/conv_algo.h)
  // Whose batch-norm kernels run (kernels/cuda/batch_norm.cu), kept switchable to compare:
  // the train backward is tessera's unless TESSERA_BN_BACKWARD=cudnn (measured faster on the
  // H200); both forwards are cuDNN's unless TESSERA_BN_FORWARD=tessera (not yet measured).
  bool bn_backward_cudnn = false;
  bool bn_forward_cudnn = true;
};

Runtime& runtime();

// Launch shape of the kernels that put planes (an image channel, a matrix row) on the grid
// so that every index inside a plane is 32-bit and no index is divided by a 64-bit value:
// a block of 256 threads is `block.x` threads along a plane (the plane's size rounded up to a
// power of two, 32 to 256) times `block.y` = 256 / block.x planes, so small planes still fill
// the block; grid.x tiles a plane and grid.y steps over planes, both capped (the kernels loop).
//   for (int64_t p = blockIdx.y * blockDim.y + threadIdx.y; p < planes; p += gridDim.y * blockDim.y)
//     for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < plane_size; k += gridDim.x * blockDim.x)
// A plane of more than kMaxPlaneElements is an error naming `kernel`: the inner loop's last
// `k += gridDim.x * blockDim.x` (at most 4096 * 256) must not pass 2^31 - 1 and wrap.
constexpr int kPlaneGridX = 4096, kPlaneBlock = 256;
constexpr int64_t kMaxPlaneElements = ((int64_t{1} << 31) - 1) - int64_t{kPlaneGridX} * kPlaneBlock;
struct PlaneLaunch {
  dim3 grid, block;
};
PlaneLaunch plane_launch(int64_t planes, int64_t plane_size, const char* kernel);

// Streams and events the engine's own stream does not cover: the loader's copy stream and
// the events that order it against the engine stream (data/loader.cpp).
// A stream of its own that does not synchronise with the legacy default stream.
class Stream {
 public:
  Stream();
  ~Stream();  // unchecked: destructors must not throw
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// An event without timing. blocking_sync (cudaEventBlockingSync): a host thread waiting in
// synchronize() sleeps until the device signals, instead of spinning on a core.
class Event {
 public:
  explicit Event(bool blocking_sync);
  ~Event();  // waits for a pending record first (unchecked), then destroys
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t stream);
  void synchronize();                  // host waits for the last record; no-op if none
  void wait_in(cudaStream_t stream);   // `stream` waits for the last record (cudaStreamWaitEvent)
  bool recorded() const { return recorded_; }

 private:
  cudaEvent_t event_ = nullptr;
  bool recorded_ = false;
};

// Grid size for a grid-stride loop over n elements with `threads` per block.
inline unsigned grid_for(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = 65535LL * 8;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace kernels::cuda
