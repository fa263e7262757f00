// Warp- and block-level reductions shared by the CUDA row kernels (reduce.cu, l2_normalize.cu,
// loss.cu). Every lane of the warp must call them: the row loops are uniform per warp.
#pragma once

#include <cstdint>

namespace kernels::cuda {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// Row kernels run one warp per row: blocks of 32 x kWarpRows threads, threadIdx.y picks the
// row within the block and the grid strides over the rows.
constexpr int kWarpRows = 8;

inline unsigned row_blocks(int64_t rows) {
  int64_t blocks = (rows + kWarpRows - 1) / kWarpRows;
  const int64_t cap = 65535LL * 8;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace kernels::cuda
