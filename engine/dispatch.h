// TS_DISPATCH(device, fn, args...) calls kernels::cpu::fn(args...) or kernels::cuda::fn(args...).
// Both backends declare every kernel with the same signature (see kernels/*.h), so an engine
// op is written once and the tensor's device picks the implementation. In a CPU-only build
// (TESSERA_CUDA=0) the CUDA branch is an Error naming the kernel.
//
// Every kernel call passes through profile::dispatch (engine/profile.h): an NVTX range named
// `fn/layer` when a tool listens, a timed record inside a --profile-steps window, and
// otherwise one atomic load and a branch. The arguments are evaluated once, before the call.
// The profiler's bytes / FLOPs come from the kernel's TS_KERNEL_COST (kernels/common/cost.h),
// or, with TS_DISPATCH_COST(device, fn, cost, args...), from `cost` (a kernels::Cost
// expression the caller can compute better, evaluated only inside a profiling window).
//
// A CUDA call runs inside cuda_call (below): a failure the kernel reports becomes an Error
// naming the kernel, the layer and the size arguments, and with the sync check on
// (engine/device.h) the device is checked right after the kernel, so an asynchronous fault is
// reported by the op that caused it.
#pragma once

#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <type_traits>

#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/device.h"
#include "engine/profile.h"
#include "engine/tensor.h"
#include "kernels/common/augment_ops.h"
#include "kernels/conv.h"

namespace tessera {

namespace dispatch_detail {

// One kernel argument as it reads in a failure report: sizes and scalars as numbers, pointers
// as addresses (an illegal address is often a null or a pointer past a tensor), the shape
// structs by their fields, other structs (kernel parameters) as {...}.
template <class T>
void describe(std::ostream& os, const T& v) {
  using U = std::decay_t<T>;
  if constexpr (std::is_same_v<U, bool>) os << (v ? "true" : "false");
  else if constexpr (std::is_enum_v<U>) os << static_cast<int64_t>(v);
  else if constexpr (std::is_integral_v<U>) os << static_cast<int64_t>(v);
  else if constexpr (std::is_floating_point_v<U>) os << v;
  else if constexpr (std::is_pointer_v<U>) {
    if (v == nullptr) os << "null";
    else os << static_cast<const void*>(v);
  } else if constexpr (std::is_same_v<U, kernels::Conv2dShape>) {
    os << "x (" << v.n << ", " << v.c << ", " << v.h << ", " << v.w << ") w (" << v.o << ", " << v.c << ", " << v.kh
       << ", " << v.kw << ") stride " << v.stride << " pad " << v.pad;
  } else if constexpr (std::is_same_v<U, kernels::AugmentSpec>) {
    os << "images (" << v.channels << ", " << v.in_h << ", " << v.in_w << ") -> (" << v.channels << ", " << v.out_h
       << ", " << v.out_w << ") recipe " << v.recipe << " view " << v.view;
  } else {
    os << "{...}";
  }
}

}  // namespace dispatch_detail

// "kernel [layer] (arg, arg, ...)": what a failure report names.
template <class... Args>
std::string describe_kernel_call(const char* kernel, const Args&... args) {
  std::ostringstream os;
  os << kernel;
  const char* layer = profile::current_layer();
  if (layer && layer[0]) os << " [" << layer << "]";
  os << " (";
  const char* sep = "";
  ((os << sep, dispatch_detail::describe(os, args), sep = ", "), ...);
  os << ")";
  return os.str();
}

// Runs call() - one CUDA kernel with `args` - and reports its failures by name (see above).
template <class Call, class... Args>
void cuda_call(const char* kernel, Call&& call, const Args&... args) {
  try {
    call();
  } catch (const std::exception& e) {
    throw Error(cat(describe_kernel_call(kernel, args...), ": ", e.what()));
  }
  if (sync_check_enabled()) {
    const std::string failure = run_sync_probe();
    if (!failure.empty())
      throw Error(cat(describe_kernel_call(kernel, args...), ": ", failure, " (sync check: raised by this kernel)"));
  }
}

}  // namespace tessera

#if TESSERA_CUDA
#define TS_DISPATCH_CUDA_(fn)                                                                     \
  [](auto&&... ts_args) {                                                                         \
    ::tessera::cuda_call(#fn, [&] { ::kernels::cuda::fn(ts_args...); }, ts_args...);              \
  }
#else
#define TS_DISPATCH_CUDA_(fn) [](auto&&...) { ::tessera::no_cuda(#fn); }
#endif

#define TS_DISPATCH(device, fn, ...)                                                        \
  ::tessera::profile::dispatch<::kernels::kernel_id(#fn)>(                                  \
      (device), #fn, [](auto&&... ts_args) { ::kernels::cpu::fn(ts_args...); },             \
      TS_DISPATCH_CUDA_(fn), __VA_ARGS__)

// TS_TIER_DISPATCH(device, fn, args...): TS_DISPATCH, except that on the CPU with the fast tier
// selected (engine/cpu_kernels.h) it calls kernels::onednn::fn, profiled as "fn_onednn" with
// fn's cost, so a profile says which tier ran and rates both against the same counts. For the
// kernel families that have a fast-tier twin (convolution, the linear layer's gradients).
#if TESSERA_ONEDNN
#define TS_TIER_DISPATCH(device, fn, ...)                                                                    \
  do {                                                                                                       \
    if ((device) == ::tessera::Device::CPU && ::tessera::cpu_kernels() == ::tessera::CpuKernels::Fast)       \
      ::tessera::profile::dispatch<::kernels::kernel_id(#fn)>(                                               \
          (device), #fn "_onednn", [](auto&&... a) { ::kernels::onednn::fn(a...); }, [](auto&&...) {},       \
          __VA_ARGS__);                                                                                      \
    else                                                                                                     \
      TS_DISPATCH(device, fn, __VA_ARGS__);                                                                  \
  } while (0)
#else
#define TS_TIER_DISPATCH(device, fn, ...) TS_DISPATCH(device, fn, __VA_ARGS__)
#endif

#define TS_DISPATCH_COST(device, fn, cost, ...)                                                \
  ::tessera::profile::dispatch_with_cost(                                                      \
      (device), #fn, [&]() -> ::kernels::Cost { return cost; },                                \
      [](auto&&... ts_args) { ::kernels::cpu::fn(ts_args...); }, TS_DISPATCH_CUDA_(fn), __VA_ARGS__)
