// The device context: which backend runs, and (for CUDA) the one stream and the cuBLAS and
// cuDNN handles every kernel uses. A program calls select_device() once at start-up.
//   --device auto  CUDA when this binary was built with CUDA and a device is present, else
//                  the CPU, with a line saying which and why.
//   --device cuda  an Error with a clear cause when CUDA is not built or no device exists.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace tessera {

bool cuda_built();                 // compiled with the CUDA backend
int cuda_device_count();           // 0 when not built or no device / driver
std::string cuda_unavailable_reason();  // why cuda_device_count() is 0, "" otherwise

// Parses "auto" | "cpu" | "cuda", initialises the backend and returns the device chosen.
// `note` receives the one line to print ("device: cpu (no CUDA device: ...)").
Device select_device(const std::string& flag, std::string* note);

// Makes the CUDA stream and library handles (idempotent). select_device() calls it. With more
// than one rank, each rank's GPU (its UUID) is gathered from all ranks first: two ranks on one
// GPU (more ranks than GPUs on a machine, or a CUDA_VISIBLE_DEVICES that names one GPU twice)
// is an Error naming both, before NCCL meets it.
void init_cuda();
// The first two ranks whose GPU ids (uuids[r]: rank r's) are equal, as {a, b} with a < b;
// {-1, -1} when every id differs.
std::pair<int, int> first_shared_gpu(const std::vector<std::string>& uuids);
std::string device_description(Device d);  // "cpu (2 threads)" or "NVIDIA H100 (sm_90, 80 GiB)"

// Waits for the work queued on the engine's stream (not the loader's copy stream; no-op on the
// CPU). Only at I/O boundaries.
void synchronize(Device d);
// How many times the host waited for the device: synchronize() calls and copies between a
// CUDA tensor and host memory (copy() waits for those). Tests check that a step, with
// profiling off, adds none.
int64_t synchronize_count();
void count_host_wait();  // copy()'s waits

// Called by the dispatch macro when a CUDA tensor reaches a CPU-only build.
[[noreturn]] void no_cuda(const char* op);

// ---- how the CUDA backend computes (the programs' --math, --allow-nondeterministic and
// --sync-check; the CPU backend is always strict FP32 and deterministic) --------------------

// TF32 (tensor cores, 10-bit mantissa) for convolutions and GEMMs. Pytorch follows PyTorch's
// defaults: allowed in convolutions (torch.backends.cudnn.allow_tf32), not in GEMMs
// (torch.backends.cuda.matmul.allow_tf32). The tests pin Fp32 (tests/main.cpp), so CUDA
// results stay within float32 drift of the CPU reference.
enum class MathMode { Pytorch, Fp32, Tf32 };
MathMode parse_math_mode(const std::string& text);  // "pytorch" | "fp32" | "tf32", else UsageError
const char* math_mode_name(MathMode m);

struct CudaOptions {
  MathMode math = MathMode::Pytorch;
  // cuDNN may use a nondeterministic convolution algorithm when it is the fastest; by
  // default only deterministic ones run, and a layer that has none is an error naming it.
  bool allow_nondeterministic = false;
  // Synchronise and check after every dispatched kernel (also TESSERA_SYNC_CHECK=1).
  bool sync_check = false;
};
// Takes effect for convolution shapes not planned yet (plans are cached per shape and these
// settings, so set them before the first step) and for every GEMM from now on.
void set_cuda_options(const CudaOptions& options);
const CudaOptions& cuda_options();

// ---- sync check --------------------------------------------------------------------------
// Kernels run asynchronously, so an illegal address or a device-side trap surfaces at some
// later call, far from its cause. With the sync check on, every CUDA dispatch synchronises
// the stream and reads the error state right after the kernel, and a failure names the
// kernel, its layer and its size arguments (engine/dispatch.h, cuda_call). It costs a full
// synchronisation per kernel: for debugging only. On from the start when the environment has
// TESSERA_SYNC_CHECK=1, or through CudaOptions::sync_check.
bool sync_check_enabled();
// What the check runs after each kernel: "" when the device is healthy, else the error. The
// default synchronises the engine's stream (CUDA builds; "" otherwise). Tests install their
// own to see the report on a machine without a GPU; returns the previous one.
using SyncProbe = std::string (*)();
SyncProbe set_sync_probe(SyncProbe probe);
std::string run_sync_probe();

}  // namespace tessera
