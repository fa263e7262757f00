// What one kernel call costs: bytes moved to or from memory and floating-point operations.
// The engine's profiler (engine/profile.h) divides these by the measured time to print
// achieved GB/s and TFLOP/s, so a kernel can be judged against the device's copy bandwidth
// or math rate.
//
// A kernel family declares the cost next to its kernels (kernels/<family>.h), with the same
// parameters as the kernel:
//
//   TS_KERNEL_COST(leaky_relu_forward, const float*, float*, int64_t n, float) {
//     return {8.0 * n, 1.0 * n};
//   }
//
// The dispatch (engine/dispatch.h) finds it by the kernel's name at compile time and calls
// it only inside a profiling window, after the kernel ran. A kernel without a declared cost
// still gets timed; its GB/s and TFLOP/s columns stay empty. Counts are what the algorithm
// must move at least (each input read once, each output written once), not what a given
// implementation happens to move, so the achieved rate is an honest lower bound.
#pragma once

#include <cstdint>

namespace kernels {

struct Cost {
  double bytes = 0;  // bytes read + written
  double flops = 0;  // floating-point operations (a multiply-add counts 2)
};

// FNV-1a of the kernel's name: a compile-time key, so the cost of a kernel is found by the
// name the dispatch macro already has, without a registry at run time.
constexpr uint64_t kernel_id(const char* name) {
  uint64_t h = 14695981039346656037ull;
  for (; *name; ++name) h = (h ^ static_cast<unsigned char>(*name)) * 1099511628211ull;
  return h;
}

// Specialised by TS_KERNEL_COST; `known` tells the dispatch whether `of` exists.
template <uint64_t Id>
struct KernelCost {
  static constexpr bool known = false;
};

}  // namespace kernels

// Use inside `namespace kernels { ... }`, in the header that declares the kernel, so every
// file that dispatches the kernel also sees its cost.
#define TS_KERNEL_COST(fn, ...)                                 \
  template <>                                                   \
  struct KernelCost<::kernels::kernel_id(#fn)> {                \
    static constexpr bool known = true;                         \
    static Cost of(__VA_ARGS__);                                \
  };                                                            \
  inline Cost KernelCost<::kernels::kernel_id(#fn)>::of(__VA_ARGS__)
