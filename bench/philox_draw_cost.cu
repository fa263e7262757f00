// The teacher kernel's draws alone, as it made them before and after issue 13's review, for
// bench/ptx-stats.sh (compiled there only; not part of the build): the instructions one
// thread spends on the draws of a group of 4 elements (element granularity) and on one
// fragment's draw (tensor / channel granularity).
//   before: cuRAND's state. curand_init computes the block under the offset and
//           curand_uniform4 always computes the next one: two Philox blocks per 4 elements.
//   after:  kernels/common/philox.h's philox_block: one block, the same four draws
//           (tests/philox_test.cpp, OneBlockPerFourIndicesEqualsTheState).
#include <curand_kernel.h>

#include "kernels/common/philox.h"

__global__ void group_draws_curand(uint64_t seed, uint64_t subsequence, int64_t g, float4* out) {
  curandStatePhilox4_32_10_t s;
  curand_init(seed, subsequence, static_cast<uint64_t>(g), &s);
  out[threadIdx.x] = curand_uniform4(&s);
}

__global__ void group_draws_philox_block(uint64_t seed, uint64_t subsequence, int64_t g, float4* out) {
  const kernels::Philox4 w = kernels::philox_block(seed, subsequence, static_cast<uint64_t>(g) >> 2);
  out[threadIdx.x] = make_float4(kernels::philox_to_uniform(w.x), kernels::philox_to_uniform(w.y),
                                 kernels::philox_to_uniform(w.z), kernels::philox_to_uniform(w.w));
}

__global__ void fragment_draw_curand(uint64_t seed, uint64_t subsequence, uint64_t fragment, float* out) {
  curandStatePhilox4_32_10_t s;
  curand_init(seed, subsequence, fragment, &s);
  out[threadIdx.x] = curand_uniform(&s);
}

__global__ void fragment_draw_philox_block(uint64_t seed, uint64_t subsequence, uint64_t fragment, float* out) {
  out[threadIdx.x] = kernels::philox_uniform_at(seed, subsequence, fragment);
}
