// CUDA twin of kernels/pool.h.
// Max pooling: one thread per output scans its window in the CPU's order (rows, then columns,
// '>' keeps the first maximum, padding never a candidate), so both backends pick the same
// winner. The backward gathers instead of scattering: one thread per input element sums dy of
// the (few) windows whose winner it is, so there are no atomics and the sums are
// deterministic. Global average pooling: one warp per (image, channel) plane forward; the
// backward, one thread per element.
// Index math: planes (N*C) are on the grid (kernels/cuda/runtime.h, plane_launch), every index
// inside a plane is 32-bit, and the divisions by W, WO and the stride are FastDivmod's
// multiply-high and shift: no 64-bit division per element (there was one per element for
// k % wo, k / wo, k / (ho * wo) and the window bounds).
// Cost: kernels/pool.h. Tests: tests/ops_conv_test.cpp (CUDA vs CPU), tests/cuda_review_test.cpp
// (FastDivmod, shapes with several planes per block and planes larger than a tile).
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/fast_divmod.h"
#include "kernels/cuda/runtime.h"
#include "kernels/pool.h"

namespace kernels::cuda {
namespace {

struct PoolGeometry {
  int h, w, ho, wo, kernel, stride, pad;
  FastDivmod by_w, by_wo, by_stride;
};

// x (planes, h, w) -> y, argmax (planes, ho, wo)
__global__ void max_pool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                        int32_t* __restrict__ argmax, int64_t planes, PoolGeometry g) {
  const int plane_out = g.ho * g.wo;
  for (int64_t p = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; p < planes; p += int64_t(gridDim.y) * blockDim.y) {
    const float* in = x + p * g.h * g.w;
    float* out = y + p * plane_out;
    int32_t* arg = argmax + p * plane_out;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < plane_out; k += gridDim.x * blockDim.x) {
      uint32_t j;
      const int i = static_cast<int>(g.by_wo.divmod(static_cast<uint32_t>(k), &j));
      int best = -1;
      float best_v = 0.0f;
      for (int u = 0; u < g.kernel; ++u) {
        const int r = i * g.stride - g.pad + u;
        if (r < 0 || r >= g.h) continue;
        for (int v = 0; v < g.kernel; ++v) {
          const int col = static_cast<int>(j) * g.stride - g.pad + v;
          if (col < 0 || col >= g.w) continue;
          const float val = in[r * g.w + col];
          if (best < 0 || val > best_v) {
            best = r * g.w + col;
            best_v = val;
          }
        }
      }
      out[k] = best_v;
      arg[k] = best;
    }
  }
}

// dy, argmax (planes, ho, wo) -> dx (planes, h, w) +=
__global__ void max_pool_backward_kernel(const float* __restrict__ dy, const int32_t* __restrict__ argmax,
                                         float* __restrict__ dx, int64_t planes, PoolGeometry g) {
  const int plane_in = g.h * g.w;
  for (int64_t p = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; p < planes; p += int64_t(gridDim.y) * blockDim.y) {
    const float* gy = dy + p * g.ho * g.wo;
    const int32_t* arg = argmax + p * g.ho * g.wo;
    float* gx = dx + p * plane_in;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < plane_in; k += gridDim.x * blockDim.x) {
      uint32_t col;
      const int r = static_cast<int>(g.by_w.divmod(static_cast<uint32_t>(k), &col));
      // Outputs (i, j) whose window covers (r, col): i*stride - pad <= r <= i*stride - pad + kernel - 1,
      // so i from ceil((r + pad - kernel + 1) / stride) (at least 0) to floor((r + pad) / stride).
      const int lo_r = r + g.pad - g.kernel + g.stride, lo_c = static_cast<int>(col) + g.pad - g.kernel + g.stride;
      const int i_lo = lo_r > 0 ? static_cast<int>(g.by_stride.div(static_cast<uint32_t>(lo_r))) : 0;
      const int j_lo = lo_c > 0 ? static_cast<int>(g.by_stride.div(static_cast<uint32_t>(lo_c))) : 0;
      const int i_hi = min(g.ho - 1, static_cast<int>(g.by_stride.div(static_cast<uint32_t>(r + g.pad))));
      const int j_hi = min(g.wo - 1, static_cast<int>(g.by_stride.div(col + static_cast<uint32_t>(g.pad))));
      float acc = 0.0f;
      for (int i = i_lo; i <= i_hi; ++i)
        for (int j = j_lo; j <= j_hi; ++j) {
          const int o = i * g.wo + j;
          if (arg[o] == k) acc += gy[o];
        }
      gx[k] += acc;
    }
  }
}

// x (planes, hw) -> y (planes): one warp per plane.
__global__ void avg_pool_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes,
                                        int hw) {
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < planes; p += warps) {
    const float* in = x + p * hw;
    float s = 0.0f;
    for (int k = lane; k < hw; k += 32) s += in[k];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) y[p] = s / static_cast<float>(hw);
  }
}

// dy (planes) -> dx (planes, hw) += dy[p] / hw
__global__ void avg_pool_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t planes,
                                         int hw, float inv) {
  for (int64_t p = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; p < planes; p += int64_t(gridDim.y) * blockDim.y) {
    const float g = dy[p] * inv;
    float* out = dx + p * hw;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < hw; k += gridDim.x * blockDim.x) out[k] += g;
  }
}

// The geometry in 32-bit form; every index the kernels form must fit (window starts may be
// negative by pad, ends past the plane by up to kernel + stride).
PoolGeometry geometry(int64_t h, int64_t w, int64_t ho, int64_t wo, int64_t kernel, int64_t stride, int64_t pad,
                      const char* op) {
  const int64_t reach = 2 * (pad + kernel + stride);
  if (h <= 0 || w <= 0 || kernel <= 0 || stride <= 0 || pad < 0 || h * w > kMaxIndex32 || ho * wo > kMaxIndex32 ||
      h + reach > kMaxIndex32 || w + reach > kMaxIndex32)
    throw_status("CUDA",
                 ("expected kernel and stride > 0, pad >= 0 and a plane within 32-bit indices (h * w, ho * wo and h or w "
                  "plus the window's reach under 2^31), found h " + std::to_string(h) +
                  " w " + std::to_string(w) + " kernel " + std::to_string(kernel) + " stride " +
                  std::to_string(stride) + " pad " + std::to_string(pad))
                     .c_str(),
                 op, __FILE__, __LINE__);
  PoolGeometry g;
  g.h = static_cast<int>(h), g.w = static_cast<int>(w), g.ho = static_cast<int>(ho), g.wo = static_cast<int>(wo);
  g.kernel = static_cast<int>(kernel), g.stride = static_cast<int>(stride), g.pad = static_cast<int>(pad);
  g.by_w = FastDivmod(w);
  g.by_wo = FastDivmod(wo > 0 ? wo : 1);
  g.by_stride = FastDivmod(stride);
  return g;
}

}  // namespace

void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int64_t planes, int64_t h, int64_t w, int64_t ho,
                        int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
  if (planes * ho * wo == 0) return;
  const PoolGeometry g = geometry(h, w, ho, wo, kernel, stride, pad, "max_pool2d_forward");
  const PlaneLaunch l = plane_launch(planes, ho * wo, "max_pool2d_forward");
  max_pool_forward_kernel<<<l.grid, l.block, 0, runtime().stream>>>(x, y, argmax, planes, g);
  KERNEL_LAUNCH_CHECK();
}

void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, int64_t planes, int64_t h, int64_t w,
                         int64_t ho, int64_t wo, int64_t kernel, int64_t stride, int64_t pad) {
  if (planes * h * w == 0) return;
  const PoolGeometry g = geometry(h, w, ho, wo, kernel, stride, pad, "max_pool2d_backward");
  const PlaneLaunch l = plane_launch(planes, h * w, "max_pool2d_backward");
  max_pool_backward_kernel<<<l.grid, l.block, 0, runtime().stream>>>(dy, argmax, dx, planes, g);
  KERNEL_LAUNCH_CHECK();
}

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  if (planes == 0) return;
  if (hw > kMaxIndex32 - 32)  // a lane's last `k += 32` stays in int
    throw_status("CUDA", ("expected a plane of at most 2^31 - 33 elements, found " + std::to_string(hw)).c_str(),
                 "global_avg_pool_forward", __FILE__, __LINE__);
  avg_pool_forward_kernel<<<grid_for(planes * 32), 256, 0, runtime().stream>>>(x, y, planes, static_cast<int>(hw));
  KERNEL_LAUNCH_CHECK();
}

void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  if (planes * hw == 0) return;
  const PlaneLaunch l = plane_launch(planes, hw, "global_avg_pool_backward");
  avg_pool_backward_kernel<<<l.grid, l.block, 0, runtime().stream>>>(dy, dx, planes, static_cast<int>(hw),
                                                                    1.0f / static_cast<float>(hw));
  KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels::cuda
