// CUDA twin of kernels/augment.h: one thread block per image runs the shared pipeline
// (kernels/common/augment_pipeline.h) with __syncthreads() between stages; the team's shared
// state (parameters, histogram, blur taps) lives in shared memory. One launch per call covers
// the whole batch. Compiled with --fmad=false (Makefile) so its float math matches the CPU
// reference exactly. An image index outside [0, num_images) is never read: the block prints it
// and traps, the GPU's form of the CPU twin's exception (the indices live on the device, so
// the launcher cannot look at them without a synchronisation).
#include <cstdio>
#include <stdexcept>

#include "kernels/augment.h"
#include "kernels/common/augment_pipeline.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;

struct BlockTeam {
  int rank, size;
  __device__ void sync() { __syncthreads(); }
  __device__ void add(int32_t* counter, int32_t v) { atomicAdd(counter, v); }
  // Integer sum over the block: exact, so the atomic order does not matter.
  __device__ long long sum(long long v, unsigned long long* slot) {
    if (rank == 0) *slot = 0;
    __syncthreads();
    atomicAdd(slot, static_cast<unsigned long long>(v));
    __syncthreads();
    const long long total = static_cast<long long>(*slot);
    __syncthreads();
    return total;
  }
  template <class F>
  __device__ void grid(int rows, int cols, F f) {
    for (int i = rank; i < rows * cols; i += size) {
      const int r = i / cols;
      f(r, i - r * cols);
    }
  }
};

__global__ void augment_kernel(const uint8_t* images, int64_t num_images, const int64_t* indices,
                               const int64_t* epochs, AugmentSpec spec, float* out, float* scratch) {
  __shared__ AugmentShared shared;
  const int64_t i = blockIdx.x;
  const int64_t index = indices[i];
  if (index < 0 || index >= num_images) {
    // Thread 0 alone prints, then traps: were every thread to trap, another warp could end the
    // kernel before the message was written.
    if (threadIdx.x == 0) {
      printf("augment: image index %lld at batch position %lld, expected in [0, %lld)\n",
             static_cast<long long>(index), static_cast<long long>(i), static_cast<long long>(num_images));
      __trap();
    }
    return;
  }
  const int64_t in_size = int64_t{spec.channels} * spec.in_h * spec.in_w;
  const int64_t out_size = int64_t{spec.channels} * spec.out_h * spec.out_w;
  BlockTeam team{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
  augment_image(team, spec, images + index * in_size, epochs[i], index, out + i * out_size,
                scratch + i * out_size, shared);
}

}  // namespace

void augment(const uint8_t* images, int64_t num_images, const int64_t* indices, const int64_t* epochs, int64_t n,
             const AugmentSpec& spec, float* out, float* scratch) {
  const std::string problem = augment_spec_problem(spec);
  if (!problem.empty()) throw std::invalid_argument("augment: " + problem);
  if (n == 0) return;
  if (n > 0x7FFFFFFF) throw std::invalid_argument("augment: batch larger than the grid limit 2^31 - 1");
  augment_kernel<<<static_cast<unsigned>(n), kThreads, 0, runtime().stream>>>(images, num_images, indices, epochs,
                                                                              spec, out, scratch);
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
