// Definitions for kernels/cuda/runtime.h and kernels/cuda/check.h.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {

Runtime& runtime() {
  static Runtime r = [] {
    Runtime made;
    // "" keeps the default; anything but tessera or cudnn is an error naming the variable.
    const auto uses_cudnn = [](const char* name, bool otherwise) {
      const std::string v = std::getenv(name) ? std::getenv(name) : "";
      if (v != "" && v != "tessera" && v != "cudnn")
        throw std::invalid_argument(std::string(name) + ": expected tessera or cudnn, found '" + v + "'");
      return v == "" ? otherwise : v == "cudnn";
    };
    made.bn_backward_cudnn = uses_cudnn("TESSERA_BN_BACKWARD", made.bn_backward_cudnn);
    made.bn_forward_cudnn = uses_cudnn("TESSERA_BN_FORWARD", made.bn_forward_cudnn);
    return made;
  }();
  return r;
}

PlaneLaunch plane_launch(int64_t planes, int64_t plane_size, const char* kernel) {
  if (plane_size > kMaxPlaneElements)
    throw std::runtime_error(std::string(kernel) + ": expected a plane of at most " + std::to_string(kMaxPlaneElements) +
                             " elements (32-bit indices), found " + std::to_string(plane_size));
  int x = 32;
  while (x < kPlaneBlock && x < plane_size) x *= 2;
  const int y = kPlaneBlock / x;
  const int64_t tiles = (plane_size + x - 1) / x, plane_groups = (planes + y - 1) / y;
  PlaneLaunch l;
  l.block = dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
  l.grid = dim3(static_cast<unsigned>(tiles < kPlaneGridX ? (tiles > 0 ? tiles : 1) : kPlaneGridX),
                static_cast<unsigned>(plane_groups < 65535 ? (plane_groups > 0 ? plane_groups : 1) : 65535));
  return l;
}

Stream::Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);
}

Event::Event(bool blocking_sync) {
  const unsigned flags = cudaEventDisableTiming | (blocking_sync ? cudaEventBlockingSync : 0u);
  CUDA_CHECK(cudaEventCreateWithFlags(&event_, flags));
}
Event::~Event() {
  if (!event_) return;
  if (recorded_) cudaEventSynchronize(event_);
  cudaEventDestroy(event_);
}
void Event::record(cudaStream_t stream) {
  CUDA_CHECK(cudaEventRecord(event_, stream));
  recorded_ = true;
}
void Event::synchronize() {
  if (recorded_) CUDA_CHECK(cudaEventSynchronize(event_));
}
void Event::wait_in(cudaStream_t stream) {
  if (recorded_) CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0));
}

void throw_status(const char* api, const char* what, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + api + " error '" +
                           what + "' in " + expr);
}

void throw_cudnn(cudnnStatus_t status, const char* expr, const char* file, int line) {
  char detail[1024] = {0};
  cudnnGetLastErrorString(detail, sizeof detail);
  std::string what = cudnnGetErrorString(status);
  if (detail[0] != '\0') what += std::string(" (") + detail + ")";
  // A fault left by earlier work shows at cuDNN's next call; say so rather than blame cuDNN.
  const cudaError_t pending = cudaPeekAtLastError();
  if (pending != cudaSuccess)
    what += std::string("; CUDA error pending from earlier work: ") + cudaGetErrorString(pending) +
            " (TESSERA_SYNC_CHECK=1 names the kernel that left it)";
  throw_status("cuDNN", what.c_str(), expr, file, line);
}

const char* cublas_status_name(cublasStatus_t status) { return cublasGetStatusString(status); }

const char* curand_status_name(curandStatus_t status) {
  switch (status) {
    case CURAND_STATUS_SUCCESS: return "CURAND_STATUS_SUCCESS";
    case CURAND_STATUS_VERSION_MISMATCH: return "CURAND_STATUS_VERSION_MISMATCH";
    case CURAND_STATUS_NOT_INITIALIZED: return "CURAND_STATUS_NOT_INITIALIZED";
    case CURAND_STATUS_ALLOCATION_FAILED: return "CURAND_STATUS_ALLOCATION_FAILED";
    case CURAND_STATUS_TYPE_ERROR: return "CURAND_STATUS_TYPE_ERROR";
    case CURAND_STATUS_OUT_OF_RANGE: return "CURAND_STATUS_OUT_OF_RANGE";
    case CURAND_STATUS_LENGTH_NOT_MULTIPLE: return "CURAND_STATUS_LENGTH_NOT_MULTIPLE";
    case CURAND_STATUS_DOUBLE_PRECISION_REQUIRED: return "CURAND_STATUS_DOUBLE_PRECISION_REQUIRED";
    case CURAND_STATUS_LAUNCH_FAILURE: return "CURAND_STATUS_LAUNCH_FAILURE";
    case CURAND_STATUS_PREEXISTING_FAILURE: return "CURAND_STATUS_PREEXISTING_FAILURE";
    case CURAND_STATUS_INITIALIZATION_FAILED: return "CURAND_STATUS_INITIALIZATION_FAILED";
    case CURAND_STATUS_ARCH_MISMATCH: return "CURAND_STATUS_ARCH_MISMATCH";
    case CURAND_STATUS_INTERNAL_ERROR: return "CURAND_STATUS_INTERNAL_ERROR";
  }
  return "unknown cuRAND status";
}

}  // namespace kernels::cuda
