// Portability macro for math shared by the CPU and CUDA backends.
// A function marked TS_HD compiles as __host__ __device__ under nvcc and as a
// plain inline function under the host compiler, so one definition serves both.
#pragma once

#if defined(__CUDACC__)
#define TS_HD __host__ __device__ __forceinline__
#else
#define TS_HD inline
#endif
