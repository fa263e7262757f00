// CUDA twin of kernels/conv.h: cuDNN's convolution (the legacy cudnnConvolution* API).
//
// Per shape and settings, once: the tensor and filter descriptors are made and the forward's
// algorithm is chosen with cuDNN's heuristics (cudnnGet*Algorithm_v7) at the first
// conv2d_workspace_size of the shape; the data and filter gradients' algorithms at the first
// backward size query, so a shape that only ever runs forward (a teacher, an evaluation) never
// needs a backward algorithm. The heuristics run on the host with no device work, no
// synchronisation and no memory, so choosing inside a step is safe and a captured step
// replays unchanged; cudnnFind*Ex would time every algorithm, which needs a synchronisation
// and its own buffers. The choice among the candidates is kernels/common/conv_algo.h's rule:
// the fastest one that succeeded, fits kMaxWorkspaceBytes, runs with math the run allows and
// (unless --allow-nondeterministic) is deterministic, so a run repeats bit for bit; with none,
// an error (the engine's dispatch adds the layer's name). Should the chosen one refuse to run
// (NOT_SUPPORTED / EXECUTION_FAILED), the next usable candidate that fits the given scratch
// takes its place for the rest of the process, with a line on stderr.
// Math (runtime().conv_tf32, --math): FP32 asks cuDNN for FMA math and takes only FMA
// candidates (TF32's 10-bit mantissa puts results ~1e-3 away from the CPU reference, so the
// tests pin FP32); TF32 asks for cuDNN's default math, as PyTorch does. Each pass has its own
// convolution descriptor carrying its chosen candidate's math type, as cuDNN requires.
// Gradients: dw and db are added into (beta = 1); dx is written (beta = 0) unless the caller
// asks to accumulate (kernels/conv.h).
#include <algorithm>
#include <array>
#include <cstdio>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>

#include "kernels/common/conv_algo.h"
#include "kernels/conv.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {
namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

// One pass's choice: cuDNN's candidates as the heuristics listed them, fastest first, the one
// in use, its convolution descriptor (carrying that candidate's math type) and its workspace.
template <typename Perf>
struct PassPlan {
  Perf list[16];
  int count = 0;
  int at = -1;  // index in list; -1: not chosen yet
  cudnnConvolutionDescriptor_t conv = nullptr;
  size_t bytes = 0;
};

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  PassPlan<cudnnConvolutionFwdAlgoPerf_t> forward;
  PassPlan<cudnnConvolutionBwdDataAlgoPerf_t> data;
  PassPlan<cudnnConvolutionBwdFilterAlgoPerf_t> filter;
  bool backward_chosen = false;
};

using PlanKey = std::array<int64_t, 11>;  // n, c, h, w, o, kh, kw, stride, pad, tf32, deterministic

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > (int64_t{1} << 31) - 1)
    throw_status("cuDNN", (std::string(what) + " does not fit cuDNN's int").c_str(), "conv2d", __FILE__, __LINE__);
  return static_cast<int>(v);
}

AlgoMath math_of(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_DEFAULT_MATH: return AlgoMath::Default;
    case CUDNN_TENSOR_OP_MATH: return AlgoMath::TensorOp;
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return AlgoMath::TensorOpAllowConversion;
    case CUDNN_FMA_MATH: return AlgoMath::Fma;
  }
  return AlgoMath::TensorOpAllowConversion;  // unknown: never usable
}

std::string shape_text(const Conv2dShape& s) {
  return "x (" + std::to_string(s.n) + ", " + std::to_string(s.c) + ", " + std::to_string(s.h) + ", " +
         std::to_string(s.w) + "), w (" + std::to_string(s.o) + ", " + std::to_string(s.c) + ", " +
         std::to_string(s.kh) + ", " + std::to_string(s.kw) + "), stride " + std::to_string(s.stride) + ", pad " +
         std::to_string(s.pad);
}

cudnnConvolutionDescriptor_t make_conv_descriptor(const Conv2dShape& s, cudnnMathType_t math) {
  cudnnConvolutionDescriptor_t d = nullptr;
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, as_int(s.pad, "pad"), as_int(s.pad, "pad"),
                                              as_int(s.stride, "stride"), as_int(s.stride, "stride"), 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionMathType(d, math));
  return d;
}

// The heuristics are asked with the math the run allows: FMA (strict FP32) or cuDNN's
// default, which may use TF32 on Ampere and later (PyTorch's allow_tf32).
cudnnConvolutionDescriptor_t query_descriptor(const Conv2dShape& s) {
  return make_conv_descriptor(s, runtime().conv_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
}

// The workspace cuDNN says candidate `p.at` needs with its own descriptor: what the run calls
// are checked against.
size_t workspace_of(const ConvPlan& c, const PassPlan<cudnnConvolutionFwdAlgoPerf_t>& p) {
  size_t b = 0;
  CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(runtime().cudnn, c.x, c.w, p.conv, c.y, p.list[p.at].algo, &b));
  return b;
}
size_t workspace_of(const ConvPlan& c, const PassPlan<cudnnConvolutionBwdDataAlgoPerf_t>& p) {
  size_t b = 0;
  CUDNN_CHECK(
      cudnnGetConvolutionBackwardDataWorkspaceSize(runtime().cudnn, c.w, c.y, p.conv, c.x, p.list[p.at].algo, &b));
  return b;
}
size_t workspace_of(const ConvPlan& c, const PassPlan<cudnnConvolutionBwdFilterAlgoPerf_t>& p) {
  size_t b = 0;
  CUDNN_CHECK(
      cudnnGetConvolutionBackwardFilterWorkspaceSize(runtime().cudnn, c.x, c.y, p.conv, c.w, p.list[p.at].algo, &b));
  return b;
}

// kernels/common/conv_algo.h's rule over the pass's list, from candidate `first` on, within
// `max_memory` bytes of workspace; the chosen one's descriptor and workspace replace the old.
// Returns false (and `why`) when none is usable.
template <typename Perf>
bool choose(const ConvPlan& c, PassPlan<Perf>& p, const Conv2dShape& s, int first, size_t max_memory,
            std::string* why) {
  AlgoCandidate cand[16];
  for (int i = 0; i < p.count; ++i) {
    cand[i].algo = static_cast<int>(p.list[i].algo);
    cand[i].succeeded = p.list[i].status == CUDNN_STATUS_SUCCESS;
    cand[i].deterministic = p.list[i].determinism == CUDNN_DETERMINISTIC;
    cand[i].math = math_of(p.list[i].mathType);
    cand[i].memory = p.list[i].memory;
  }
  AlgoRequest r;
  r.tf32 = runtime().conv_tf32;
  r.deterministic = runtime().deterministic;
  r.max_memory = max_memory;
  const int i = pick_conv_algo(cand, p.count, r, why, first);
  if (i < 0) return false;
  if (p.conv) CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(p.conv));
  p.at = i;
  p.conv = make_conv_descriptor(s, p.list[i].mathType);
  p.bytes = workspace_of(c, p);
  return true;
}

template <typename Perf>
void choose_first(const ConvPlan& c, PassPlan<Perf>& p, const Conv2dShape& s, const char* pass) {
  std::string why;
  if (!choose(c, p, s, 0, kMaxWorkspaceBytes, &why)) {
    const std::string what = std::string("conv2d ") + pass + " of " + shape_text(s) + ": " + why +
                             (runtime().deterministic ? "; --allow-nondeterministic lets cuDNN use its fastest" : "");
    throw_status("cuDNN", what.c_str(), "cudnnGetConvolution*Algorithm_v7", __FILE__, __LINE__);
  }
}

ConvPlan make_plan(const Conv2dShape& s) {
  for (const std::string& problem : {cudnn_tensor_problem("conv2d input", s.n, s.c, s.h, s.w),
                                     cudnn_tensor_problem("conv2d output", s.n, s.o, s.ho, s.wo)})
    if (!problem.empty()) throw_status("cuDNN", problem.c_str(), "conv2d", __FILE__, __LINE__);
  ConvPlan p;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.bias));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, as_int(s.n, "N"),
                                         as_int(s.c, "C"), as_int(s.h, "H"), as_int(s.w, "W")));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, as_int(s.o, "O"),
                                         as_int(s.c, "C"), as_int(s.kh, "KH"), as_int(s.kw, "KW")));
  cudnnConvolutionDescriptor_t query = query_descriptor(s);
  int n = 0, c = 0, ho = 0, wo = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(query, p.x, p.w, &n, &c, &ho, &wo));
  if (n != s.n || c != s.o || ho != s.ho || wo != s.wo)
    throw_status("cuDNN", "output shape differs from the engine's", "cudnnGetConvolution2dForwardOutputDim",
                 __FILE__, __LINE__);
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, ho, wo));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c, 1, 1));
  CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(runtime().cudnn, p.x, p.w, query, p.y, 16, &p.forward.count,
                                                     p.forward.list));
  CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(query));
  choose_first(p, p.forward, s, "forward");
  return p;
}

void choose_backward(ConvPlan& p, const Conv2dShape& s) {
  if (p.backward_chosen) return;
  cudnnHandle_t h = runtime().cudnn;
  cudnnConvolutionDescriptor_t query = query_descriptor(s);
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, query, p.x, 16, &p.data.count, p.data.list));
  CUDNN_CHECK(
      cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, query, p.w, 16, &p.filter.count, p.filter.list));
  CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(query));
  choose_first(p, p.data, s, "backward data");
  choose_first(p, p.filter, s, "backward filter");
  p.backward_chosen = true;
}

// Plans live for the whole process, like cuDNN's handle (a handful of shapes per model).
ConvPlan& plan_for(const Conv2dShape& s) {
  static std::map<PlanKey, ConvPlan> plans;
  const PlanKey key{s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.pad, runtime().conv_tf32 ? 1 : 0,
                    runtime().deterministic ? 1 : 0};
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(s)).first;
  return it->second;
}

void check_workspace(size_t needed, size_t given) {
  if (given < needed)
    throw_status("cuDNN", "workspace smaller than conv2d_workspace_size said", "conv2d", __FILE__, __LINE__);
}

// cudnn_status_is_refusal's numbers are cuDNN's.
static_assert(CUDNN_STATUS_NOT_SUPPORTED == 3000 && CUDNN_STATUS_NOT_SUPPORTED_SHAPE == 3002 &&
                  CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE == 3003 && CUDNN_STATUS_NOT_SUPPORTED_LAYOUT == 3004 &&
                  CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER == 3005 &&
                  CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE == 3009 &&
                  CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT == 3010 &&
                  CUDNN_STATUS_NOT_SUPPORTED_PADDING == 3011 && CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM == 3012 &&
                  CUDNN_STATUS_EXECUTION_FAILED == 5000 && CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER == 5001 &&
                  CUDNN_STATUS_EXECUTION_FAILED_CUDART == 5003,
              "cuDNN's status numbers moved: update kernels/common/conv_algo.h's cudnn_status_is_refusal");

// A refusal of this algorithm, and no CUDA error pending (a sticky fault from an earlier
// kernel can surface as any status; then no candidate would run).
bool may_fall_back(cudnnStatus_t status) {
  return cudnn_status_is_refusal(static_cast<int>(status)) && cudaPeekAtLastError() == cudaSuccess;
}

// Runs `call` (the pass with the plan's current choice). A refusal to run moves the pass to
// the next usable candidate that fits the `given` scratch, for good, and tries again; any other
// failure, or no candidate left, is an error that lists the refusals.
template <typename Perf, typename Call>
void run_pass(const ConvPlan& c, PassPlan<Perf>& p, const Conv2dShape& s, const char* pass, size_t given,
              const char* expr, Call call) {
  check_workspace(p.bytes, given);
  cudnnStatus_t status = call();
  if (status == CUDNN_STATUS_SUCCESS) return;
  std::string refused;  // "algorithm 1 (CUDNN_STATUS_NOT_SUPPORTED), ..."
  const int chosen = p.at;
  while (may_fall_back(status)) {
    refused += (refused.empty() ? "" : ", ") + std::string("algorithm ") +
               std::to_string(static_cast<int>(p.list[p.at].algo)) + " (" + cudnnGetErrorString(status) + ")";
    // The next usable candidate whose workspace, asked with its own descriptor, fits.
    bool found = false;
    while (!found && choose(c, p, s, p.at + 1, std::min(given, kMaxWorkspaceBytes), nullptr)) found = p.bytes <= given;
    if (!found) break;
    std::fprintf(stderr, "conv2d %s of %s: cuDNN refused to run %s; using algorithm %d from now on\n", pass,
                 shape_text(s).c_str(), refused.c_str(), static_cast<int>(p.list[p.at].algo));
    status = call();
    if (status == CUDNN_STATUS_SUCCESS) return;
  }
  // The plan keeps the choice it had: the error ends the run, but a caller that catches it
  // must not find the layer moved to a candidate that never ran.
  if (p.at != chosen) {
    try {
      choose(c, p, s, chosen, std::numeric_limits<size_t>::max(), nullptr);
    } catch (const std::exception&) {  // the error below is the one to report
    }
  }
  const std::string what = refused.empty() ? std::string(expr) : std::string(expr) + " after refusals: " + refused;
  throw_cudnn(status, what.c_str(), __FILE__, __LINE__);
}

}  // namespace

// An empty batch (N = 0) returns before any descriptor: cuDNN refuses a zero dimension, and
// there is nothing to compute (dw and db gain nothing, dx has no elements).
void conv2d_workspace_size(const Conv2dShape& s, ConvPass pass, size_t* bytes) {
  *bytes = 0;
  if (s.n == 0) return;
  ConvPlan& p = plan_for(s);
  if (pass == ConvPass::Forward) {
    *bytes = p.forward.bytes;
    return;
  }
  choose_backward(p, s);
  *bytes = std::max(p.data.bytes, p.filter.bytes);  // the two run one after the other
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* workspace,
                    size_t workspace_bytes) {
  if (s.n == 0) return;
  ConvPlan& p = plan_for(s);
  const float one = 1.0f, zero = 0.0f;
  run_pass(p, p.forward, s, "forward", workspace_bytes, "cudnnConvolutionForward", [&] {
    return cudnnConvolutionForward(runtime().cudnn, &one, p.x, x, p.w, w, p.forward.conv, p.forward.list[p.forward.at].algo,
                                   workspace, workspace_bytes, &zero, p.y, y);
  });
  if (b) CUDNN_CHECK(cudnnAddTensor(runtime().cudnn, &one, p.bias, b, &one, p.y, y));
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                     float* db, bool accumulate_dx, void* workspace, size_t workspace_bytes) {
  if (s.n == 0) return;
  ConvPlan& p = plan_for(s);
  choose_backward(p, s);
  const float one = 1.0f, zero = 0.0f;
  cudnnHandle_t h = runtime().cudnn;
  if (dx)  // beta 0 (a new gradient): cuDNN writes dx without reading it
    run_pass(p, p.data, s, "backward data", workspace_bytes, "cudnnConvolutionBackwardData", [&] {
      return cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dy, p.data.conv, p.data.list[p.data.at].algo, workspace,
                                          workspace_bytes, accumulate_dx ? &one : &zero, p.x, dx);
    });
  if (dw)
    run_pass(p, p.filter, s, "backward filter", workspace_bytes, "cudnnConvolutionBackwardFilter", [&] {
      return cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dy, p.filter.conv, p.filter.list[p.filter.at].algo,
                                            workspace, workspace_bytes, &one, p.w, dw);
    });
  if (db) CUDNN_CHECK(cudnnConvolutionBackwardBias(h, &one, p.y, dy, &one, p.bias, db));
}

}  // namespace kernels::cuda
