// TS_DISPATCH(device, fn, args...) calls kernels::cpu::fn(args...) or kernels::cuda::fn(args...).
// Both backends declare every kernel with the same signature (see kernels/*.h), so an engine
// op is written once and the tensor's device picks the implementation. In a CPU-only build
// (TESSERA_CUDA=0) the CUDA branch is an Error naming the kernel.
#pragma once

#include "engine/device.h"
#include "engine/tensor.h"

#if TESSERA_CUDA
#define TS_DISPATCH(device, fn, ...)                 \
  do {                                               \
    if ((device) == ::tessera::Device::CUDA) {       \
      ::kernels::cuda::fn(__VA_ARGS__);              \
    } else {                                         \
      ::kernels::cpu::fn(__VA_ARGS__);               \
    }                                                \
  } while (0)
#else
#define TS_DISPATCH(device, fn, ...)                 \
  do {                                               \
    if ((device) == ::tessera::Device::CUDA) {       \
      ::tessera::no_cuda(#fn);                       \
    } else {                                         \
      ::kernels::cpu::fn(__VA_ARGS__);               \
    }                                                \
  } while (0)
#endif
