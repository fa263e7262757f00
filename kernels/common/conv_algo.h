// The rule by which the CUDA convolution (kernels/cuda/conv.cu) chooses one of cuDNN's
// candidate algorithms for a pass, written over plain fields so that it is compiled and
// tested on every machine (tests/cuda_review_test.cpp), GPU or not.
//
// cuDNN's heuristics (cudnnGet*Algorithm_v7) list candidates fastest first, each with a status,
// a determinism flag, the math it runs with and the workspace it needs. A candidate is usable
// when it succeeded, fits the workspace limit, runs with math the run allows, and, unless
// the run allows nondeterminism, is deterministic. The first usable one wins.
//   - Math: FP32 runs allow only FMA math; TF32 runs also allow cuDNN's default and tensor-op
//     math (on Ampere and later both may use TF32 for float data). Tensor-op math "with
//     conversion" may round float inputs to FP16, which no flag asks for: never usable.
//   - Determinism: a run repeats bit for bit only if every algorithm is deterministic, so
//     there is no silent fallback: with none usable the caller reports an error that names
//     the layer and the flag (--allow-nondeterministic) that lets the fastest one run.
//   - A candidate the heuristics called a success can still refuse to run (cuDNN's
//     NOT_SUPPORTED or EXECUTION_FAILED at the call, as PyTorch's try-all loop also expects):
//     the caller then takes the next usable one whose workspace fits the scratch it was given,
//     and says so on stderr. Only a refusal moves it (cudnn_status_is_refusal): a fault of
//     the CUDA runtime or driver, or a broken installation, is an error at once, since every
//     other candidate would fail alike and the plan would change for nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kernels {

// cuDNN's cudnnMathType_t, by meaning (conv.cu maps one to the other).
enum class AlgoMath { Default, TensorOp, TensorOpAllowConversion, Fma };

struct AlgoCandidate {
  int algo = 0;                 // cuDNN's algorithm number (for messages)
  bool succeeded = false;       // status == CUDNN_STATUS_SUCCESS
  bool deterministic = false;   // determinism == CUDNN_DETERMINISTIC
  AlgoMath math = AlgoMath::Fma;
  size_t memory = 0;            // workspace bytes
};

struct AlgoRequest {
  bool tf32 = false;            // TF32 allowed (else strict FP32: FMA math only)
  bool deterministic = true;    // only deterministic algorithms
  size_t max_memory = size_t{1} << 30;
};

// A cuDNN status (cudnnStatus_t's value; conv.cu checks these numbers against cuDNN's enum)
// that refuses this algorithm for this shape, so another candidate may run: NOT_SUPPORTED
// (3000) and its SHAPE, DATA_TYPE, LAYOUT, SHARED_MEMORY_INSUFFICIENT, PADDING and
// BAD_LAUNCH_PARAM kinds (3002-3004, 3010-3012), and the plain EXECUTION_FAILED (5000).
// Not: the installation's kinds of NOT_SUPPORTED (3005-3009: driver, runtime, architecture,
// prerequisite, sub-library), nor EXECUTION_FAILED_CUDA_DRIVER / _CUBLAS / _CUDART / _CURAND
// (5001-5004), which is how a fault left by an earlier kernel shows at cuDNN's launch.
inline bool cudnn_status_is_refusal(int status) {
  switch (status) {
    case 3000: case 3002: case 3003: case 3004: case 3010: case 3011: case 3012: case 5000: return true;
    default: return false;
  }
}

// cuDNN's tensors hold at most 2^31 - 1 elements (its descriptors count in int); a larger one
// is refused as BAD_PARAM, naming no layer. Empty when a (n, c, h, w) tensor fits; else the
// engine's message: `what`, the shape and its size, and what to lower.
inline std::string cudnn_tensor_problem(const char* what, int64_t n, int64_t c, int64_t h, int64_t w) {
  const double elements = static_cast<double>(n) * static_cast<double>(c) * static_cast<double>(h) *
                          static_cast<double>(w);  // exact enough near 2^31; no int64 overflow
  if (elements <= 2147483647.0) return {};
  return std::string(what) + ": (" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " +
         std::to_string(w) + ") is " + std::to_string(static_cast<long long>(elements)) +
         " elements; cuDNN takes at most 2^31 - 1 per tensor: lower the batch size (or the image size)";
}

inline bool algo_math_allowed(AlgoMath m, bool tf32) {
  switch (m) {
    case AlgoMath::Fma: return true;
    case AlgoMath::Default:
    case AlgoMath::TensorOp: return tf32;
    case AlgoMath::TensorOpAllowConversion: return false;
  }
  return false;
}

inline const char* algo_math_name(AlgoMath m) {
  switch (m) {
    case AlgoMath::Default: return "default math";
    case AlgoMath::TensorOp: return "tensor-op math";
    case AlgoMath::TensorOpAllowConversion: return "tensor-op math with FP16 conversion";
    case AlgoMath::Fma: return "FMA math";
  }
  return "unknown math";
}

// Index of the chosen candidate, or -1; then `why` (when given) says, candidate by candidate,
// what ruled each out. `first`: candidates before it are not considered (the fallback when
// the chosen one fails to run: the next usable one, its workspace within what was given).
inline int pick_conv_algo(const AlgoCandidate* c, int count, const AlgoRequest& r, std::string* why = nullptr,
                          int first = 0) {
  std::string reasons;
  for (int i = first; i < count; ++i) {
    const char* reason = nullptr;
    if (!c[i].succeeded) reason = "not supported";
    else if (c[i].memory > r.max_memory) reason = "workspace over the limit";
    else if (!algo_math_allowed(c[i].math, r.tf32)) reason = algo_math_name(c[i].math);
    else if (r.deterministic && !c[i].deterministic) reason = "nondeterministic";
    if (!reason) return i;
    reasons += (reasons.empty() ? "" : ", ") + std::string("algo ") + std::to_string(c[i].algo) + ": " + reason;
  }
  if (why)
    *why = std::string("no ") + (r.deterministic ? "deterministic " : "") + "algorithm with " +
           (r.tf32 ? "FP32 or TF32" : "FP32") + " math among cuDNN's " + std::to_string(count) + " candidates (" +
           (!reasons.empty() ? reasons : std::string(first > 0 ? "none after those tried" : "none listed")) + ")";
  return -1;
}

}  // namespace kernels
