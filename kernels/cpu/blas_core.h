// Which OpenBLAS kernel set the CPU backend runs (CPU only; the CUDA backend has no twin).
#pragma once

namespace kernels::cpu {

// OpenBLAS's core name after the engine's choice ("SkylakeX", "Haswell", ...).
const char* blas_core_name();

}  // namespace kernels::cpu
