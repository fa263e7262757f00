// Status checks for every CUDA, cuBLAS, cuDNN and cuRAND call, and a launch check after
// every kernel. A failure throws std::runtime_error naming the call, the file and the line;
// the programs turn it into a one-line message and exit code 1.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <curand.h>

#include <string>

namespace kernels::cuda {

[[noreturn]] void throw_status(const char* api, const char* what, const char* expr, const char* file,
                               int line);
const char* cublas_status_name(cublasStatus_t status);
// cuDNN's status name followed by cudnnGetLastErrorString: cuDNN 9 says there which
// descriptor or argument it refused, which the status alone ("CUDNN_STATUS_BAD_PARAM") does not.
[[noreturn]] void throw_cudnn(cudnnStatus_t status, const char* expr, const char* file, int line);
const char* curand_status_name(curandStatus_t status);

}  // namespace kernels::cuda

#define CUDA_CHECK(expr)                                                                       \
  do {                                                                                         \
    cudaError_t status_ = (expr);                                                              \
    if (status_ != cudaSuccess)                                                                \
      ::kernels::cuda::throw_status("CUDA", cudaGetErrorString(status_), #expr, __FILE__, __LINE__); \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                       \
    cublasStatus_t status_ = (expr);                                                         \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::kernels::cuda::throw_status("cuBLAS", ::kernels::cuda::cublas_status_name(status_), #expr, \
                                    __FILE__, __LINE__);                                     \
  } while (0)

#define CUDNN_CHECK(expr)                                                                        \
  do {                                                                                           \
    cudnnStatus_t status_ = (expr);                                                              \
    if (status_ != CUDNN_STATUS_SUCCESS)                                                         \
      ::kernels::cuda::throw_cudnn(status_, #expr, __FILE__, __LINE__);                          \
  } while (0)

#define CURAND_CHECK(expr)                                                                   \
  do {                                                                                       \
    curandStatus_t status_ = (expr);                                                         \
    if (status_ != CURAND_STATUS_SUCCESS)                                                    \
      ::kernels::cuda::throw_status("cuRAND", ::kernels::cuda::curand_status_name(status_), #expr, \
                                    __FILE__, __LINE__);                                     \
  } while (0)

// After every <<<...>>> launch: catches bad launch configurations at the launch site.
#define KERNEL_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
