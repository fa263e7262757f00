// The device context: which backend runs, and (for CUDA) the one stream and the cuBLAS and
// cuDNN handles every kernel uses. A program calls select_device() once at start-up.
//   --device auto  CUDA when this binary was built with CUDA and a device is present, else
//                  the CPU, with a line saying which and why.
//   --device cuda  an Error with a clear cause when CUDA is not built or no device exists.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace tessera {

bool cuda_built();                 // compiled with the CUDA backend
int cuda_device_count();           // 0 when not built or no device / driver
std::string cuda_unavailable_reason();  // why cuda_device_count() is 0, "" otherwise

// Parses "auto" | "cpu" | "cuda", initialises the backend and returns the device chosen.
// `note` receives the one line to print ("device: cpu (no CUDA device: ...)").
Device select_device(const std::string& flag, std::string* note);

// Makes the CUDA stream and library handles (idempotent). select_device() calls it.
void init_cuda();
std::string device_description(Device d);  // "cpu (2 threads)" or "NVIDIA H100 (sm_90, 80 GiB)"

// Waits for all queued work on the device (no-op on the CPU). Only at I/O boundaries.
void synchronize(Device d);
// How many times synchronize() was called (any device): tests check that a step, with
// profiling off, adds none.
int64_t synchronize_count();

// Called by the dispatch macro when a CUDA tensor reaches a CPU-only build.
[[noreturn]] void no_cuda(const char* op);

}  // namespace tessera
