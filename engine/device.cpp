#include "engine/device.h"

#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/distributed.h"

#if TESSERA_CUDA
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera {

bool cuda_built() { return TESSERA_CUDA != 0; }

int cuda_device_count() {
#if TESSERA_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string cuda_unavailable_reason() {
#if TESSERA_CUDA
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cat("no CUDA device: ", cudaGetErrorString(e));
  }
  return n == 0 ? "no CUDA device found" : "";
#else
  return "this binary was built without CUDA (make CUDA=0)";
#endif
}

namespace {

CudaOptions g_cuda_options;

bool env_sync_check() {
  const char* v = std::getenv("TESSERA_SYNC_CHECK");
  return v && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}
std::atomic<bool> g_sync_check{env_sync_check()};

// The CUDA runtime's view of the options: what the kernels read (conv.cu) and the cuBLAS
// handle's math mode (CUBLAS_DEFAULT_MATH is strict FP32 unless NVIDIA_TF32_OVERRIDE says
// otherwise; the TF32 mode lets cuBLAS round GEMM inputs to TF32).
void apply_cuda_options() {
#if TESSERA_CUDA
  auto& rt = kernels::cuda::runtime();
  const MathMode m = g_cuda_options.math;
  rt.conv_tf32 = m != MathMode::Fp32;
  rt.deterministic = !g_cuda_options.allow_nondeterministic;
  if (rt.cublas)
    CUBLAS_CHECK(cublasSetMathMode(rt.cublas, m == MathMode::Tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
#endif
}

}  // namespace

MathMode parse_math_mode(const std::string& text) {
  if (text == "pytorch") return MathMode::Pytorch;
  if (text == "fp32") return MathMode::Fp32;
  if (text == "tf32") return MathMode::Tf32;
  throw UsageError(cat("--math: expected pytorch, fp32 or tf32, found '", text, "'"));
}

const char* math_mode_name(MathMode m) {
  switch (m) {
    case MathMode::Pytorch: return "pytorch";
    case MathMode::Fp32: return "fp32";
    case MathMode::Tf32: return "tf32";
  }
  return "?";
}

void set_cuda_options(const CudaOptions& options) {
  g_cuda_options = options;
  g_sync_check.store(options.sync_check || env_sync_check(), std::memory_order_relaxed);
  apply_cuda_options();
}

const CudaOptions& cuda_options() { return g_cuda_options; }

bool sync_check_enabled() { return g_sync_check.load(std::memory_order_relaxed); }

namespace {
std::string device_sync_probe() {
#if TESSERA_CUDA
  if (!kernels::cuda::runtime().stream) return "";
  cudaError_t e = cudaStreamSynchronize(kernels::cuda::runtime().stream);
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? "" : cat("CUDA error '", cudaGetErrorString(e), "'");
#else
  return "";
#endif
}
std::atomic<SyncProbe> g_sync_probe{&device_sync_probe};
}  // namespace

SyncProbe set_sync_probe(SyncProbe probe) { return g_sync_probe.exchange(probe ? probe : &device_sync_probe); }

std::string run_sync_probe() { return g_sync_probe.load()(); }

std::pair<int, int> first_shared_gpu(const std::vector<std::string>& uuids) {
  for (size_t b = 1; b < uuids.size(); ++b)
    for (size_t a = 0; a < b; ++a)
      if (uuids[a] == uuids[b]) return {static_cast<int>(a), static_cast<int>(b)};
  return {-1, -1};
}

#if TESSERA_CUDA
namespace {
// Every rank's GPU UUID, gathered over MPI (16 bytes carried as 4 floats: copied, never
// computed on); the same verdict on every rank, so each throws the same Error.
void check_one_rank_per_gpu(int gpu) {
  dist::Communicator& world = dist::world();
  if (world.size() == 1) return;
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, gpu));
  static_assert(sizeof prop.uuid == 4 * sizeof(float), "a CUDA UUID is 16 bytes");
  float mine[4];
  std::memcpy(mine, &prop.uuid, sizeof mine);
  std::vector<float> all(static_cast<size_t>(4 * world.size()));
  world.all_gather(mine, all.data(), 4, Device::CPU, "the ranks' GPU ids");
  std::vector<std::string> uuids;
  for (int r = 0; r < world.size(); ++r)
    uuids.emplace_back(reinterpret_cast<const char*>(all.data() + 4 * r), 16);
  const auto [a, b] = first_shared_gpu(uuids);
  if (a >= 0)
    throw Error(cat("ranks ", a, " and ", b, " both run on one GPU (", prop.name,
                    "): expected one rank per GPU; start at most as many ranks per machine as it has GPUs, "
                    "or give each rank its own CUDA_VISIBLE_DEVICES"));
}
}  // namespace
#endif

void init_cuda() {
#if TESSERA_CUDA
  auto& rt = kernels::cuda::runtime();
  if (rt.stream) return;
  // One GPU per rank of this machine (engine/distributed.h); GPU 0 for one process.
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  // A launcher that gives each rank only its own GPU (srun --gpus-per-task=1, a per-rank
  // CUDA_VISIBLE_DEVICES) leaves every rank seeing one: that one is the rank's.
  const int local = dist::world().local_rank();
  if (count > 1 && local >= count)
    throw Error(cat("rank ", dist::world().rank(), " is local rank ", local, " of its machine, which has ", count,
                    " GPUs: expected at most one rank per GPU"));
  const int gpu = count == 1 ? 0 : local;
  CUDA_CHECK(cudaSetDevice(gpu));
  check_one_rank_per_gpu(gpu);
  // Made into locals and published together: rt.stream set means the runtime is whole, so a
  // failure half-way (out of memory, a GPU in exclusive mode) fails again the same way at the
  // next call instead of handing out null cuBLAS / cuDNN handles.
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cudnnHandle_t cudnn = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasCreate(&cublas));
  CUBLAS_CHECK(cublasSetStream(cublas, stream));
  CUDNN_CHECK(cudnnCreate(&cudnn));
  CUDNN_CHECK(cudnnSetStream(cudnn, stream));
  rt.cublas = cublas;
  rt.cudnn = cudnn;
  rt.stream = stream;
  apply_cuda_options();
#else
  no_cuda("init_cuda");
#endif
}

Device select_device(const std::string& flag, std::string* note) {
  std::string why = cuda_unavailable_reason();
  if (flag == "cpu") {
    if (note) *note = cat("device: ", device_description(Device::CPU));
    return Device::CPU;
  }
  if (flag == "cuda") {
    if (!why.empty()) throw Error(cat("--device cuda: ", why));
    init_cuda();
    if (note) *note = cat("device: ", device_description(Device::CUDA));
    return Device::CUDA;
  }
  if (flag == "auto") {
    if (why.empty()) {
      init_cuda();
      if (note) *note = cat("device: ", device_description(Device::CUDA), " (--device auto)");
      return Device::CUDA;
    }
    if (note) *note = cat("device: ", device_description(Device::CPU), " (--device auto: ", why, ")");
    return Device::CPU;
  }
  throw UsageError(cat("--device: expected auto, cpu or cuda, found '", flag, "'"));
}

std::string device_description(Device d) {
  if (d == Device::CPU) return cat("cpu (", omp_get_max_threads(), " threads)");
#if TESSERA_CUDA
  cudaDeviceProp p{};
  int current = 0;
  CUDA_CHECK(cudaGetDevice(&current));
  CUDA_CHECK(cudaGetDeviceProperties(&p, current));
  return cat("cuda ", p.name, " (sm_", p.major, p.minor, ", ",
             p.totalGlobalMem / (1024 * 1024 * 1024), " GiB)");
#else
  return "cuda (not built)";
#endif
}

namespace {
std::atomic<int64_t> g_synchronize_count{0};
}

int64_t synchronize_count() { return g_synchronize_count.load(); }
void count_host_wait() { g_synchronize_count.fetch_add(1, std::memory_order_relaxed); }

void synchronize(Device d) {
  g_synchronize_count.fetch_add(1, std::memory_order_relaxed);
  if (d == Device::CPU) return;
#if TESSERA_CUDA
  CUDA_CHECK(cudaStreamSynchronize(kernels::cuda::runtime().stream));
#endif
}

void no_cuda(const char* op) {
  throw Error(cat(op, ": a CUDA tensor reached a binary built without CUDA (make CUDA=0)"));
}

}  // namespace tessera
