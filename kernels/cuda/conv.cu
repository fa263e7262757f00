// CUDA twin of kernels/conv.h: cuDNN's convolution (the legacy cudnnConvolution* API).
//
// Per shape and settings, once (conv2d_workspace_size is the first call the engine makes for a
// shape): the tensor and filter descriptors are made, and one algorithm each for the forward,
// the data gradient and the filter gradient is chosen with cuDNN's heuristics
// (cudnnGet*Algorithm_v7). The heuristics run on the host with no device work, no
// synchronisation and no memory, so choosing inside a step is safe and a captured step
// replays unchanged; cudnnFind*Ex would time every algorithm, which needs a synchronisation
// and its own buffers. The choice among the candidates is kernels/common/conv_algo.h's rule:
// the fastest one that succeeded, fits kMaxWorkspaceBytes, runs with math the run allows and
// (unless --allow-nondeterministic) is deterministic, so a run repeats bit for bit; with none,
// an error (the engine's dispatch adds the layer's name).
// Math (runtime().conv_tf32, --math): FP32 asks cuDNN for FMA math and takes only FMA
// candidates (TF32's 10-bit mantissa puts results ~1e-3 away from the CPU reference, so the
// tests pin FP32); TF32 asks for cuDNN's default math, as PyTorch does. Each pass has its own
// convolution descriptor carrying its chosen candidate's math type, as cuDNN requires.
// Gradients accumulate: cuDNN's beta = 1 adds into dx, dw and db, as every backward does.
#include <algorithm>
#include <array>
#include <map>
#include <string>

#include "kernels/common/conv_algo.h"
#include "kernels/conv.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {
namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  // One per pass, each set to the math type of the algorithm chosen for it.
  cudnnConvolutionDescriptor_t forward_conv = nullptr, data_conv = nullptr, filter_conv = nullptr;
  cudnnConvolutionFwdAlgo_t forward_algo{};
  cudnnConvolutionBwdDataAlgo_t data_algo{};
  cudnnConvolutionBwdFilterAlgo_t filter_algo{};
  size_t forward_bytes = 0;   // the forward algorithm's workspace
  size_t backward_bytes = 0;  // the larger of the data and filter gradient algorithms' 
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

// kernels/common/conv_algo.h's rule over cuDNN's list; `pass` names the pass for the error.
template <typename Perf>
Perf pick(const Perf* perf, int count, const Conv2dShape& s, const char* pass) {
  AlgoCandidate c[16];
  if (count > 16) count = 16;
  for (int i = 0; i < count; ++i) {
    c[i].algo = static_cast<int>(perf[i].algo);
    c[i].succeeded = perf[i].status == CUDNN_STATUS_SUCCESS;
    c[i].deterministic = perf[i].determinism == CUDNN_DETERMINISTIC;
    c[i].math = math_of(perf[i].mathType);
    c[i].memory = perf[i].memory;
  }
  AlgoRequest r;
  r.tf32 = runtime().conv_tf32;
  r.deterministic = runtime().deterministic;
  r.max_memory = kMaxWorkspaceBytes;
  std::string why;
  const int i = pick_conv_algo(c, count, r, &why);
  if (i < 0) {
    const std::string what = std::string("conv2d ") + pass + " of " + shape_text(s) + ": " + why +
                             (r.deterministic ? "; --allow-nondeterministic lets cuDNN use its fastest" : "");
    throw_status("cuDNN", what.c_str(), "cudnnGetConvolution*Algorithm_v7", __FILE__, __LINE__);
  }
  return perf[i];
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

ConvPlan make_plan(const Conv2dShape& s) {
  ConvPlan p;
  cudnnHandle_t h = runtime().cudnn;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.bias));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, as_int(s.n, "N"),
                                         as_int(s.c, "C"), as_int(s.h, "H"), as_int(s.w, "W")));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, as_int(s.o, "O"),
                                         as_int(s.c, "C"), as_int(s.kh, "KH"), as_int(s.kw, "KW")));
  // The heuristics are asked with the math the run allows: FMA (strict FP32) or cuDNN's
  // default, which may use TF32 on Ampere and later (PyTorch's allow_tf32).
  const cudnnMathType_t requested = runtime().conv_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  cudnnConvolutionDescriptor_t query = make_conv_descriptor(s, requested);
  int n = 0, c = 0, ho = 0, wo = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(query, p.x, p.w, &n, &c, &ho, &wo));
  if (n != s.n || c != s.o || ho != s.ho || wo != s.wo)
    throw_status("cuDNN", "output shape differs from the engine's", "cudnnGetConvolution2dForwardOutputDim",
                 __FILE__, __LINE__);
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, ho, wo));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c, 1, 1));

  int count = 0;
  cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, p.w, query, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &count, fwd));
  const auto f = pick(fwd, count, s, "forward");
  cudnnConvolutionBwdDataAlgoPerf_t data[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, query, p.x,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, data));
  const auto d = pick(data, count, s, "backward data");
  cudnnConvolutionBwdFilterAlgoPerf_t filter[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, query, p.w,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, filter));
  const auto g = pick(filter, count, s, "backward filter");
  CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(query));
  // cuDNN runs an algorithm with the descriptor's math type, which must be the one the
  // heuristics reported for it: one descriptor per pass.
  p.forward_conv = make_conv_descriptor(s, f.mathType);
  p.data_conv = make_conv_descriptor(s, d.mathType);
  p.filter_conv = make_conv_descriptor(s, g.mathType);
  p.forward_algo = f.algo;
  p.data_algo = d.algo;
  p.filter_algo = g.algo;
  // The sizes again from the Get*WorkspaceSize calls, which are what the run calls check against.
  size_t fb = 0, db = 0, gb = 0;
  CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, p.forward_conv, p.y, p.forward_algo, &fb));
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w, p.y, p.data_conv, p.x, p.data_algo, &db));
  CUDNN_CHECK(
      cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, p.filter_conv, p.w, p.filter_algo, &gb));
  p.forward_bytes = fb;
  p.backward_bytes = std::max(db, gb);
  return p;
}

// Plans live for the whole process, like cuDNN's handle (a handful of shapes per model).
const ConvPlan& plan_for(const Conv2dShape& s) {
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

}  // namespace

void conv2d_workspace_size(const Conv2dShape& s, ConvPass pass, size_t* bytes) {
  const ConvPlan& p = plan_for(s);
  *bytes = pass == ConvPass::Forward ? p.forward_bytes : p.backward_bytes;
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* workspace,
                    size_t workspace_bytes) {
  const ConvPlan& p = plan_for(s);
  check_workspace(p.forward_bytes, workspace_bytes);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnConvolutionForward(runtime().cudnn, &one, p.x, x, p.w, w, p.forward_conv, p.forward_algo, workspace,
                                      workspace_bytes, &zero, p.y, y));
  if (b) CUDNN_CHECK(cudnnAddTensor(runtime().cudnn, &one, p.bias, b, &one, p.y, y));
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                     float* db, bool accumulate_dx, void* workspace, size_t workspace_bytes) {
  const ConvPlan& p = plan_for(s);
  check_workspace(p.backward_bytes, workspace_bytes);
  const float one = 1.0f, zero = 0.0f;
  cudnnHandle_t h = runtime().cudnn;
  if (dx)  // beta 0 (a new gradient): cuDNN writes dx without reading it
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dy, p.data_conv, p.data_algo, workspace,
                                             workspace_bytes, accumulate_dx ? &one : &zero, p.x, dx));
  if (dw)
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dy, p.filter_conv, p.filter_algo, workspace,
                                               workspace_bytes, &one, p.w, dw));
  if (db) CUDNN_CHECK(cudnnConvolutionBackwardBias(h, &one, p.y, dy, &one, p.bias, db));
}

}  // namespace kernels::cuda
