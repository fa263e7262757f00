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
#pragma once

#include "engine/device.h"
#include "engine/profile.h"
#include "engine/tensor.h"

#if TESSERA_CUDA
#define TS_DISPATCH_CUDA_(fn) [](auto&&... ts_args) { ::kernels::cuda::fn(ts_args...); }
#else
#define TS_DISPATCH_CUDA_(fn) [](auto&&...) { ::tessera::no_cuda(#fn); }
#endif

#define TS_DISPATCH(device, fn, ...)                                                        \
  ::tessera::profile::dispatch<::kernels::kernel_id(#fn)>(                                  \
      (device), #fn, [](auto&&... ts_args) { ::kernels::cpu::fn(ts_args...); },             \
      TS_DISPATCH_CUDA_(fn), __VA_ARGS__)

#define TS_DISPATCH_COST(device, fn, cost, ...)                                                \
  ::tessera::profile::dispatch_with_cost(                                                      \
      (device), #fn, [&]() -> ::kernels::Cost { return cost; },                                \
      [](auto&&... ts_args) { ::kernels::cpu::fn(ts_args...); }, TS_DISPATCH_CUDA_(fn), __VA_ARGS__)
