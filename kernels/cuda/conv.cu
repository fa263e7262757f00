// CUDA twin of kernels/conv.h: cuDNN's convolution (the legacy cudnnConvolution* API).
//
// Per shape, once (conv2d_workspace_size is the first call the engine makes for a shape): the
// tensor, filter and convolution descriptors are made, and one algorithm each for the forward,
// the data gradient and the filter gradient is chosen with cuDNN's heuristics
// (cudnnGet*Algorithm_v7). The heuristics run on the host with no device work, no
// synchronisation and no memory, so choosing inside a step is safe and a captured step
// replays unchanged; cudnnFind*Ex would time every algorithm, which needs a synchronisation
// and its own buffers. Among the candidates (fastest first) the first deterministic one whose
// workspace fits kMaxWorkspaceBytes wins, so a run repeats bit for bit.
// Math is restricted to full FP32 FMA (CUDNN_FMA_MATH): no TF32 tensor cores, whose 10-bit
// mantissa would put the CUDA results ~1e-3 away from the CPU reference.
// Gradients accumulate: cuDNN's beta = 1 adds into dx, dw and db, as every backward does.
#include <array>
#include <map>
#include <string>

#include "kernels/conv.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace kernels::cuda {
namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t forward_algo{};
  cudnnConvolutionBwdDataAlgo_t data_algo{};
  cudnnConvolutionBwdFilterAlgo_t filter_algo{};
  size_t forward_bytes = 0;   // the forward algorithm's workspace
  size_t backward_bytes = 0;  // the larger of the data and filter gradient algorithms' 
};

using PlanKey = std::array<int64_t, 9>;  // n, c, h, w, o, kh, kw, stride, pad

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > (int64_t{1} << 31) - 1)
    throw_status("cuDNN", (std::string(what) + " does not fit cuDNN's int").c_str(), "conv2d", __FILE__, __LINE__);
  return static_cast<int>(v);
}

// The first deterministic, successful candidate within the workspace limit; failing that, the
// first successful one. `what` names the pass for the error when none works.
template <typename Perf>
Perf pick(const Perf* perf, int count, const char* what) {
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC &&
        perf[i].memory <= kMaxWorkspaceBytes)
      return perf[i];
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= kMaxWorkspaceBytes) return perf[i];
  throw_status("cuDNN", "no algorithm available for this shape", what, __FILE__, __LINE__);
}

ConvPlan make_plan(const Conv2dShape& s) {
  ConvPlan p;
  cudnnHandle_t h = runtime().cudnn;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.bias));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p.conv));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, as_int(s.n, "N"),
                                         as_int(s.c, "C"), as_int(s.h, "H"), as_int(s.w, "W")));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, as_int(s.o, "O"),
                                         as_int(s.c, "C"), as_int(s.kh, "KH"), as_int(s.kw, "KW")));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p.conv, as_int(s.pad, "pad"), as_int(s.pad, "pad"),
                                              as_int(s.stride, "stride"), as_int(s.stride, "stride"), 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, CUDNN_FMA_MATH));
  int n = 0, c = 0, ho = 0, wo = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &n, &c, &ho, &wo));
  if (n != s.n || c != s.o || ho != s.ho || wo != s.wo)
    throw_status("cuDNN", "output shape differs from the engine's", "cudnnGetConvolution2dForwardOutputDim",
                 __FILE__, __LINE__);
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, ho, wo));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c, 1, 1));

  int count = 0;
  cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, p.w, p.conv, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &count, fwd));
  const auto f = pick(fwd, count, "conv2d forward");
  cudnnConvolutionBwdDataAlgoPerf_t data[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, p.conv, p.x,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, data));
  const auto d = pick(data, count, "conv2d backward data");
  cudnnConvolutionBwdFilterAlgoPerf_t filter[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, p.conv, p.w,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, filter));
  const auto g = pick(filter, count, "conv2d backward filter");
  p.forward_algo = f.algo;
  p.data_algo = d.algo;
  p.filter_algo = g.algo;
  // The sizes again from the Get*WorkspaceSize calls, which are what the run calls check against.
  size_t fb = 0, db = 0, gb = 0;
  CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, p.conv, p.y, p.forward_algo, &fb));
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w, p.y, p.conv, p.x, p.data_algo, &db));
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, p.conv, p.w, p.filter_algo, &gb));
  p.forward_bytes = fb;
  p.backward_bytes = std::max(db, gb);
  return p;
}

// Plans live for the whole process, like cuDNN's handle (a handful of shapes per model).
const ConvPlan& plan_for(const Conv2dShape& s) {
  static std::map<PlanKey, ConvPlan> plans;
  const PlanKey key{s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.pad};
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
  CUDNN_CHECK(cudnnConvolutionForward(runtime().cudnn, &one, p.x, x, p.w, w, p.conv, p.forward_algo, workspace,
                                      workspace_bytes, &zero, p.y, y));
  if (b) CUDNN_CHECK(cudnnAddTensor(runtime().cudnn, &one, p.bias, b, &one, p.y, y));
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                     float* db, void* workspace, size_t workspace_bytes) {
  const ConvPlan& p = plan_for(s);
  check_workspace(p.backward_bytes, workspace_bytes);
  const float one = 1.0f;
  cudnnHandle_t h = runtime().cudnn;
  if (dx)
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, p.w, w, p.y, dy, p.conv, p.data_algo, workspace,
                                             workspace_bytes, &one, p.x, dx));
  if (dw)
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, p.x, x, p.y, dy, p.conv, p.filter_algo, workspace,
                                               workspace_bytes, &one, p.w, dw));
  if (db) CUDNN_CHECK(cudnnConvolutionBackwardBias(h, &one, p.y, dy, &one, p.bias, db));
}

}  // namespace kernels::cuda
