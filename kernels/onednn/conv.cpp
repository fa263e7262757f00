// CPU fast tier of kernels/conv.h: oneDNN's convolution (forward, data gradient, filter
// gradient), the CPU mirror of kernels/cuda/conv.cu. Each pass of a shape runs on oneDNN or on
// the reference, whichever measured faster (conv2d_on_onednn: the table and its reasons), and
// on oneDNN with its direct algorithm or, for 3x3 stride-1 convolutions on large enough maps,
// Winograd's F(4x4, 3x3) (conv2d_wants_winograd: 1.9-2.6x faster per pass on the CIFAR
// ResNet's layers), as cuDNN picks Winograd on the GPU; a shape whose every output window
// covers the whole input map runs as one dense GEMM instead (conv2d_runs_dense,
// kernels/onednn/conv_dense.cpp). Same math as the reference (kernels/cpu/conv.cpp), float32
// throughout; the sums run in another order (Winograd: through tile transforms), so results
// differ from the reference by float32 rounding (tests/conv_fast_test.cpp bounds both).
//
// Cost: direct, 2 N O C KH KW HO WO flops per pass; Winograd F(4x4, 3x3), 36 multiply-adds per
// 4x4 output tile and (input, output) channel pair where direct does 9 x 16 = 144, plus the tile
// transforms, which are linear in N (C + O) HO WO and dominate when channels are few.
//
// Plans. Per (shape, OpenMP thread count, layout) and per pass, once: the primitive descriptors
// (oneDNN's choice of implementation, e.g. jit:avx512_core), the primitives (JIT code), the
// reorders at the layer boundary and where each buffer sits in the scratch. The thread count is
// part of the key because oneDNN sizes per-thread scratch and splits work when a primitive is
// made. conv2d_workspace_size is the first call the engine makes for a shape and pass, so a
// step's first pass pays the creation (a few ms per shape) and every later call only looks up.
//
// Scratch. Every primitive runs with scratchpad_mode::user: oneDNN allocates nothing; its
// scratchpad and our reorder buffers are carved out of the `workspace` the caller passes (the
// engine's one scratch region, engine/workspace.h), and conv2d_workspace_size reports their sum
// plus one cache line, so that the carving can start on a line whatever the caller's alignment.
// Winograd's scratchpad holds the transformed tiles of a whole pass: 7-16 MB per call at the
// CIFAR shapes of batch 64 on the EPYC (53 MB for a 3-channel stem, which the table keeps
// direct); passes whose call would pass a cap run on slices of the batch (choose_winograd).
//
// Layout (kernels/onednn/onednn.h, Layout). The engine's tensors are NCHW. With Blocked, the
// default, the primitives are made with format_tag::any and pick their own formats (nChw16c
// activations and OIhw16i16o-style weights on AVX-512), and every call converts at the layer
// boundary: x, w (and dy) are reordered into scratch, y (and dx, dw) reordered back. Cost per
// call: one read and one write of each tensor converted, i.e. forward 2(|x| + |w| + |y|) floats
// moved on top of the convolution, backward 2(|dy| + |w| + |dx| + |x| + |dw|) (dy once for both
// gradients when they want the same format); about 5-15% of the convolution's own time on the
// ResNet shapes (bench/RESULTS.md). Keeping the blocked format across layers would save that
// but needs every other op (BatchNorm, ReLU, add, pooling) to read it: not done. Plain (nchw /
// oihw straight to the primitive) needs no reorders but oneDNN then runs its gemm-based
// convolution, which measured slower here; Nhwc is there to measure too.
//
// Accumulation. Backward kernels add into dw, db and, unless told to overwrite it, dx
// (kernels/conv.h). oneDNN's backward primitives overwrite their outputs and take no sum
// post-op in 2.6, so the gradients are written into scratch and the reorder back to the caller's
// layout carries a sum post-op: it adds the result into dx / dw in the same pass that converts
// it (a plain -> plain reorder when no conversion is needed). An overwritten dx takes the reorder
// without the sum, or no reorder at all when the formats agree. The bias gradient is always the
// reference's reduction over dy.
//
// Threads. Debian's libdnnl runs on OpenMP (runtime_is_openmp()): its parallel regions use the
// engine's libgomp pool and its size (omp_get_max_threads). oneDNN does its own GEMM work, so
// OpenBLAS is never called inside it and the two pools cannot oversubscribe the cores.
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/conv.h"
#include "kernels/onednn/conv_dense.h"
#include "kernels/onednn/onednn.h"

namespace kernels::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Args = std::unordered_map<int, memory>;

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& cpu_stream() {
  static dnnl::stream s(cpu_engine());
  return s;
}

std::string shape_text(const Conv2dShape& s) {
  return "conv2d (" + std::to_string(s.n) + "," + std::to_string(s.c) + "," + std::to_string(s.h) + "," +
         std::to_string(s.w) + ") * (" + std::to_string(s.o) + "," + std::to_string(s.c) + "," +
         std::to_string(s.kh) + "," + std::to_string(s.kw) + ") stride " + std::to_string(s.stride) + " pad " +
         std::to_string(s.pad);
}

// Buffers of one call placed one after another in the scratch, each on a cache line. The scratch
// itself starts on a line too (aligned()): oneDNN's Winograd kernels use aligned vector loads on
// their scratchpad and crash on a buffer that is not (the engine's workspace is 256-byte aligned,
// a test's std::vector only 16), so every size asked for carries one line of slack.
constexpr size_t kLine = 64;
char* aligned(void* workspace) {
  const auto at = reinterpret_cast<uintptr_t>(workspace);
  return static_cast<char*>(workspace) + ((kLine - at % kLine) % kLine);
}
struct Carve {
  size_t used = 0;
  size_t take(size_t bytes) {
    const size_t at = used;
    used += (bytes + 63) / 64 * 64;
    return at;
  }
};

dnnl::primitive_attr attributes(bool accumulate = false) {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // oneDNN allocates nothing: scratch is ours
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);  // destination += source: how gradients accumulate
    a.set_post_ops(ops);
  }
  return a;
}

// One tensor of a primitive: the caller's plain descriptor and the primitive's. An input whose
// formats differ is reordered into a scratch buffer first; an output is computed into a scratch
// buffer and reordered back when the formats differ or when it must be added to the caller's.
struct Operand {
  memory::desc user, md;
  std::optional<dnnl::reorder> convert;  // user -> md (input) or md -> user, maybe with += (output)
  memory::desc convert_pad;              // the reorder's scratchpad (usually empty)
  size_t offset = 0;                     // of the buffer in the scratch, when convert is set

  static Operand input(const memory::desc& user, const memory::desc& md, Carve& carve) {
    Operand o{user, md, std::nullopt, {}, 0};
    if (md != user) o.stage(user, md, attributes(), carve);
    return o;
  }
  static Operand output(const memory::desc& user, const memory::desc& md, bool accumulate, Carve& carve) {
    Operand o{user, md, std::nullopt, {}, 0};
    if (accumulate || md != user) o.stage(md, user, attributes(accumulate), carve);
    return o;
  }
  void stage(const memory::desc& from, const memory::desc& to, const dnnl::primitive_attr& attr, Carve& carve) {
    const dnnl::reorder::primitive_desc pd(cpu_engine(), from, cpu_engine(), to, attr);
    convert_pad = pd.scratchpad_desc();
    convert = dnnl::reorder(pd);
    offset = carve.take(md.get_size());
  }
  size_t pad_bytes() const { return convert ? convert_pad.get_size() : 0; }
  // The memory the primitive uses: the caller's, or the staging buffer.
  memory bind(const float* user_ptr, char* scratch) const {
    return convert ? memory(md, cpu_engine(), scratch + offset)
                   : memory(user, cpu_engine(), const_cast<float*>(user_ptr));
  }
  // Input: the caller's tensor into the staging buffer. `pad`: the call's scratchpad space.
  void to_primitive(const float* user_ptr, char* scratch, char* pad) const {
    if (!convert) return;
    convert->execute(cpu_stream(), {{DNNL_ARG_FROM, memory(user, cpu_engine(), const_cast<float*>(user_ptr))},
                                    {DNNL_ARG_TO, bind(user_ptr, scratch)},
                                    {DNNL_ARG_SCRATCHPAD, memory(convert_pad, cpu_engine(), pad)}});
  }
  // Output: the staging buffer into (or added to) the caller's tensor.
  void to_user(float* user_ptr, char* scratch, char* pad) const {
    if (!convert) return;
    convert->execute(cpu_stream(), {{DNNL_ARG_FROM, bind(user_ptr, scratch)},
                                    {DNNL_ARG_TO, memory(user, cpu_engine(), user_ptr)},
                                    {DNNL_ARG_SCRATCHPAD, memory(convert_pad, cpu_engine(), pad)}});
  }
};

// The descriptors of one shape: the caller's plain ones and the ones the primitives are asked for.
struct Descs {
  memory::desc x, w, y, bias;           // NCHW / OIHW / x as the engine holds them
  memory::desc x_any, w_any, y_any;     // what the primitives are given to choose from
  memory::dims strides, pad_l, pad_r;
  // Per ConvPart (forward, data, weights): convolution_direct, or convolution_winograd.
  std::array<dnnl::algorithm, 3> algorithm{dnnl::algorithm::convolution_direct, dnnl::algorithm::convolution_direct,
                                           dnnl::algorithm::convolution_direct};
};
constexpr int kForward = static_cast<int>(ConvPart::Forward), kData = static_cast<int>(ConvPart::Data),
              kWeights = static_cast<int>(ConvPart::Weights);

Descs descs_of(const Conv2dShape& s, Layout layout) {
  const auto f32 = memory::data_type::f32;
  Descs d;
  const memory::dims xd{s.n, s.c, s.h, s.w}, wd{s.o, s.c, s.kh, s.kw}, yd{s.n, s.o, s.ho, s.wo};
  d.x = memory::desc(xd, f32, Tag::nchw);
  d.w = memory::desc(wd, f32, Tag::oihw);
  d.y = memory::desc(yd, f32, Tag::nchw);
  d.bias = memory::desc({s.o}, f32, Tag::x);
  const Tag act = layout == Layout::Blocked ? Tag::any : layout == Layout::Plain ? Tag::nchw : Tag::nhwc;
  const Tag wt = layout == Layout::Plain ? Tag::oihw : Tag::any;
  d.x_any = memory::desc(xd, f32, act);
  d.w_any = memory::desc(wd, f32, wt);
  d.y_any = memory::desc(yd, f32, act);
  d.strides = {s.stride, s.stride};
  d.pad_l = {s.pad, s.pad};
  // The right / bottom padding that gives the engine's output size (floor division: with
  // stride 2 it is often smaller than the left padding, as in PyTorch).
  d.pad_r = {(s.ho - 1) * s.stride + s.kh - s.h - s.pad, (s.wo - 1) * s.stride + s.kw - s.w - s.pad};
  return d;
}

// The scratch of one Winograd call of a pass of `d` (forward: the larger of the bias variants);
// throws dnnl::error when oneDNN does not offer Winograd for it (strides other than 1, plain
// layouts).
size_t winograd_call_scratch(const Descs& d, int part);

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool bias, dnnl::algorithm a) {
  const dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, a, d.x_any, d.w_any,
                                             bias ? d.bias : memory::desc(), d.y_any, d.strides, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(desc, attributes(), cpu_engine());
}
dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool bias) {
  return forward_pd(d, bias, d.algorithm[kForward]);
}

// The backward descriptors take a forward one of their own algorithm as the hint (oneDNN matches
// their formats to it).
dnnl::convolution_backward_data::primitive_desc data_pd(const Descs& d, dnnl::algorithm a) {
  const dnnl::convolution_backward_data::desc desc(a, d.x_any, d.w_any, d.y_any, d.strides, d.pad_l, d.pad_r);
  return dnnl::convolution_backward_data::primitive_desc(desc, attributes(), cpu_engine(), forward_pd(d, false, a));
}
dnnl::convolution_backward_weights::primitive_desc weights_pd(const Descs& d, dnnl::algorithm a) {
  const dnnl::convolution_backward_weights::desc desc(a, d.x_any, d.w_any, d.y_any, d.strides, d.pad_l, d.pad_r);
  return dnnl::convolution_backward_weights::primitive_desc(desc, attributes(), cpu_engine(),
                                                            forward_pd(d, false, a));
}

// Winograd's scratchpad holds a pass's transformed tiles (and, for the filter gradient, one
// transformed filter per thread): 8-10 MB per pass for the CIFAR ResNet's layer1 at batch 64,
// 11-131 MB for its layers 2-4, depending on the CPU. A call's scratch is that scratchpad plus the
// blocked copies of the operands it converts (layer1 at batch 64: 16 MiB for each of x and y),
// and the engine's scratch region is sized to the step's largest call (engine/workspace.h). Under
// the measured routing a pass runs Winograd only if its call's scratch fits this cap, over the
// whole batch or over slices of it (n / 2, n / 4, ... down to kMinChunk samples, each a call of
// its own: the tiles and the copies scale with the batch, the transformed filters do not, so
// layer4's filter gradient never fits). 32 MiB is what layer1's direct call needs for its copies
// alone: on the CIFAR train step Winograd then adds nothing to the scratch the direct kernels
// need (31.9 MiB, layer2's whole-batch backward; layer1 runs in slices of 32), where capping the
// scratchpad alone let layer1's whole-batch call take 43.8 MiB (bench/RESULTS.md, same speed).
// The scratchpad oneDNN asks for depends on the CPU (its cache sizes and the thread count), so
// which passes run on slices differs between machines. Tests lower the cap
// (set_winograd_scratchpad_cap) to make passes slice on any CPU.
constexpr size_t kWinogradScratchpadCap = size_t{32} << 20;
constexpr int64_t kMinChunk = 8;

size_t winograd_call_scratch(const Descs& d, int part) {
  const auto a = dnnl::algorithm::convolution_winograd;
  // A converted operand's blocked copy; outputs that are added into (dx, dw) always have one.
  auto copy = [](const memory::desc& user, const memory::desc& md) { return md == user ? 0 : md.get_size(); };
  if (part == kForward) {
    size_t bytes = 0;
    for (bool bias : {false, true}) {
      const auto pd = forward_pd(d, bias, a);
      bytes = std::max(bytes, copy(d.x, pd.src_desc()) + copy(d.w, pd.weights_desc()) + copy(d.y, pd.dst_desc()) +
                                  pd.scratchpad_desc().get_size());
    }
    return bytes;
  }
  if (part == kData) {
    const auto pd = data_pd(d, a);
    return copy(d.y, pd.diff_dst_desc()) + copy(d.w, pd.weights_desc()) + pd.diff_src_desc().get_size() +
           pd.scratchpad_desc().get_size();
  }
  const auto pd = weights_pd(d, a);
  return copy(d.x, pd.src_desc()) + copy(d.y, pd.diff_dst_desc()) + pd.diff_weights_desc().get_size() +
         pd.scratchpad_desc().get_size();
}

// A primitive with its descriptor, made on first use: a bias variant that a model never runs
// costs only its descriptor (needed to size the scratch), not its JIT code.
template <class Pd, class Prim>
struct Lazy {
  Pd pd;
  std::optional<Prim> prim;
  const Prim& get() {
    if (!prim) prim.emplace(pd);
    return *prim;
  }
};

// ---- forward ------------------------------------------------------------------------------
struct ForwardVariant {
  Lazy<dnnl::convolution_forward::primitive_desc, dnnl::convolution_forward> conv;
  Operand x, w, y;
  size_t scratchpad_offset = 0, scratchpad_bytes = 0, bytes = 0;
};

ForwardVariant make_forward(const Descs& d, bool bias) {
  ForwardVariant v{{forward_pd(d, bias), std::nullopt}, {}, {}, {}, 0, 0, 0};
  Carve carve;
  v.x = Operand::input(d.x, v.conv.pd.src_desc(), carve);
  v.w = Operand::input(d.w, v.conv.pd.weights_desc(), carve);
  v.y = Operand::output(d.y, v.conv.pd.dst_desc(), /*accumulate=*/false, carve);
  v.scratchpad_bytes =
      std::max({v.conv.pd.scratchpad_desc().get_size(), v.x.pad_bytes(), v.w.pad_bytes(), v.y.pad_bytes()});
  v.scratchpad_offset = carve.take(v.scratchpad_bytes);
  v.bytes = carve.used + kLine;
  return v;
}

// ---- backward -----------------------------------------------------------------------------
// The data gradient and the filter gradient. dy is converted once per call for every part that
// wants the same format: dy operands live at the start of the scratch, the parts (which run one
// after the other) share the space after them. The bias gradient is the reference's reduction
// (kernels::cpu::conv2d_bias_gradient): oneDNN computes it only together with the filter
// gradient, and a plain sum over dy costs the same either way.
struct DataPart {
  Lazy<dnnl::convolution_backward_data::primitive_desc, dnnl::convolution_backward_data> conv;
  int dy = 0;  // index into BackwardPlan::dy
  Operand w, dx, dx_set;  // dx added into the caller's gradient, or written over it (a new one)
  size_t scratchpad_offset = 0, scratchpad_bytes = 0;
};
struct WeightsPart {
  Lazy<dnnl::convolution_backward_weights::primitive_desc, dnnl::convolution_backward_weights> conv;
  int dy = 0;
  Operand x, dw;
  size_t scratchpad_offset = 0, scratchpad_bytes = 0;
};

struct Backward {
  std::vector<Operand> dy;
  DataPart data;
  WeightsPart weights;
  size_t data_bytes = 0, weights_bytes = 0;  // scratch of a call that runs the one part, the other
  // Scratch of a call that runs the parts given.
  size_t bytes(bool data_part, bool weights_part) const {
    return std::max(data_part ? data_bytes : 0, weights_part ? weights_bytes : 0);
  }
};

int dy_operand(Backward& b, const memory::desc& user, const memory::desc& md, Carve& shared) {
  for (size_t i = 0; i < b.dy.size(); ++i)
    if (b.dy[i].md == md) return static_cast<int>(i);
  b.dy.push_back(Operand::input(user, md, shared));
  return static_cast<int>(b.dy.size()) - 1;
}

Backward make_backward(const Descs& d) {
  const dnnl::convolution_backward_data::primitive_desc data = data_pd(d, d.algorithm[kData]);
  const dnnl::convolution_backward_weights::primitive_desc weights = weights_pd(d, d.algorithm[kWeights]);

  Backward b;
  Carve shared;  // the dy buffers
  const int data_dy = dy_operand(b, d.y, data.diff_dst_desc(), shared);
  const int weights_dy = dy_operand(b, d.y, weights.diff_dst_desc(), shared);

  Carve data_carve{shared.used};
  DataPart dp{{data, std::nullopt}, data_dy, {}, {}, {}, 0, 0};
  dp.w = Operand::input(d.w, data.weights_desc(), data_carve);
  Carve before_dx = data_carve;  // a call runs one of dx, dx_set: they share the staging buffer
  dp.dx = Operand::output(d.x, data.diff_src_desc(), /*accumulate=*/true, data_carve);
  dp.dx_set = Operand::output(d.x, data.diff_src_desc(), /*accumulate=*/false, before_dx);
  dp.scratchpad_bytes = std::max({data.scratchpad_desc().get_size(), dp.w.pad_bytes(), dp.dx.pad_bytes(),
                                  dp.dx_set.pad_bytes(), b.dy[static_cast<size_t>(data_dy)].pad_bytes()});
  dp.scratchpad_offset = data_carve.take(dp.scratchpad_bytes);
  b.data = std::move(dp);

  Carve carve{shared.used};
  WeightsPart& wp = b.weights;
  wp.conv.pd = weights;
  wp.dy = weights_dy;
  wp.x = Operand::input(d.x, weights.src_desc(), carve);
  wp.dw = Operand::output(d.w, weights.diff_weights_desc(), /*accumulate=*/true, carve);
  wp.scratchpad_bytes = std::max({weights.scratchpad_desc().get_size(), wp.x.pad_bytes(), wp.dw.pad_bytes(),
                                  b.dy[static_cast<size_t>(wp.dy)].pad_bytes()});
  wp.scratchpad_offset = carve.take(wp.scratchpad_bytes);
  b.data_bytes = data_carve.used + kLine;
  b.weights_bytes = carve.used + kLine;
  return b;
}

// ---- the plan cache ------------------------------------------------------------------------
struct Plan {
  Conv2dShape shape;
  Descs d;
  // Per ConvPart: samples per oneDNN call. shape.n, or a slice of the batch that runs Winograd
  // within kWinogradScratchpadCap (the pass then runs as n / chunk calls of that shape's plan).
  std::array<int64_t, 3> chunk{0, 0, 0};
  std::optional<ForwardVariant> forward[2];  // [bias]
  std::optional<Backward> backward;
};

using PlanKey = std::array<int64_t, 12>;  // n, c, h, w, o, kh, kw, stride, pad, threads, layout, winograd asked

struct Cache {
  std::mutex mu;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  std::vector<Conv2dShape> shapes;  // distinct, in order first seen
  Layout layout = Layout::Blocked;
  size_t winograd_cap = kWinogradScratchpadCap;
  void drop_plans() {  // with mu held
    plans.clear();
    shapes.clear();
  }
};
Cache& cache() {
  static Cache c;
  return c;
}

// Sets Winograd for each pass of the plan that oneDNN offers it for and, when `capped`, whose
// call fits `cap` (winograd_call_scratch) over the whole batch (the plan runs it) or over a slice
// (plan.chunk: the slice's plan runs it). Descriptors only, no JIT: once per plan.
void choose_winograd(Plan& p, Layout layout, bool capped, size_t cap) {
  const auto wino = dnnl::algorithm::convolution_winograd;
  for (int part : {kForward, kData, kWeights}) {
    for (int64_t n = p.shape.n; n >= 1; n /= 2) {
      Conv2dShape slice = p.shape;
      slice.n = n;
      size_t bytes = 0;
      try {
        bytes = winograd_call_scratch(n == p.shape.n ? p.d : descs_of(slice, layout), part);
      } catch (const dnnl::error&) {
        break;  // not offered for this shape
      }
      if (!capped || bytes <= cap) {
        if (n == p.shape.n) p.d.algorithm[static_cast<size_t>(part)] = wino;
        else p.chunk[static_cast<size_t>(part)] = n;
        break;
      }
      if (n % 2 != 0 || n / 2 < kMinChunk) break;  // stays direct
    }
  }
}

// The plan of a shape with the requested passes made. Plans live for the process (a handful
// per model), like the cuDNN plans; the pointer stays valid until clear_conv2d_plans().
Plan& plan_for(const Conv2dShape& s, bool forward, bool backward) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const bool winograd = conv2d_wants_winograd(s);
  const PlanKey key{s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.pad, omp_get_max_threads(),
                    static_cast<int64_t>(c.layout), winograd};
  auto it = c.plans.find(key);
  try {
    if (it == c.plans.end()) {
      auto p = std::make_unique<Plan>();
      p->shape = s;
      p->d = descs_of(s, c.layout);
      p->chunk = {s.n, s.n, s.n};
      if (winograd)
        choose_winograd(*p, c.layout, /*capped=*/conv_routing() == ConvRouting::Measured, c.winograd_cap);
      it = c.plans.emplace(key, std::move(p)).first;
      if (std::find(c.shapes.begin(), c.shapes.end(), s) == c.shapes.end()) c.shapes.push_back(s);
    }
    // A pass that runs on slices never runs over the whole batch: its slice's plan holds its primitives.
    Plan& p = *it->second;
    const bool whole_forward = p.chunk[kForward] == s.n;
    const bool whole_backward = p.chunk[kData] == s.n || p.chunk[kWeights] == s.n;
    if (forward && whole_forward && !p.forward[0]) {
      p.forward[0] = make_forward(p.d, false);
      p.forward[1] = make_forward(p.d, true);
    }
    if (backward && whole_backward && !p.backward) p.backward = make_backward(p.d);
    return p;
  } catch (const dnnl::error& e) {
    throw std::runtime_error("oneDNN: cannot make the primitives of " + shape_text(s) + ": " + e.what());
  }
}

void check_workspace(const Conv2dShape& s, size_t needed, size_t given) {
  if (given < needed)
    throw std::runtime_error("oneDNN " + shape_text(s) + ": workspace of " + std::to_string(given) +
                             " bytes, smaller than the " + std::to_string(needed) +
                             " conv2d_workspace_size said");
}

memory scratchpad(const dnnl::primitive_desc_base& pd, char* scratch, size_t offset) {
  return memory(pd.scratchpad_desc(), cpu_engine(), scratch + offset);
}

std::atomic<int> g_routing{-1};  // ConvRouting, or -1 before the first read

}  // namespace

// ---- per-pass routing ----------------------------------------------------------------------
// Measured on the 2-core AVX-512 machine (avx512_core_bf16) on two sets of shapes, one thread,
// process CPU time, best of 8: ResNet-18 CIFAR at batch 64 (32x32 to 4x4 maps, 64 to 512
// channels) and the BYOL demo's ResNet-18 on Fashion-MNIST at batch 128 (7x7 to 1x1 maps, 16 to
// 128 channels), `conv_layers --kernels fast --split 1` under each routing (bench/RESULTS.md,
// "CPU speed against PyTorch, 2026-12-03", convolution routing):
//
//   pass     kernel        output      runs on     why (reference ms / oneDNN ms, one layer)
//   forward  3x3, 7x7      any         oneDNN      0.2-0.9x the reference (demo layer1 1.18 / 0.24)
//   forward  1x1, C <= 32  >= 8x8      reference   WRN-10-2 on Fashion-MNIST (*): block1 shortcut
//                                                  (16 -> 32, 28x28) 2.15 / 5.37, block2 (32 -> 64,
//                                                  14x14) 4.20 / 6.08
//   forward  other 1x1     any         oneDNN      a tie on CIFAR (3.2-6.5 / 3.1-5.8), 0.5x on the
//                                                  demo (0.10-0.13 / 0.05-0.07), WRN block3 (64
//                                                  channels) 3.58 / 2.76 (*)
//   data     3x3, 7x7      any         oneDNN      0.1-1.0x (demo layer2 1.18 / 0.26)
//   data     1x1           >= 8x8      reference   CIFAR layer2 ds 4.3 / 7.8, layer3 ds 3.5 / 4.4
//   data     1x1           < 8x8       oneDNN      CIFAR layer4 ds 3.3 / 3.0, demo 0.12-0.19 / 0.05-0.06
//   weights  1x1, C <= 32  >= 8x8      reference   WRN block1 shortcut 2.69 / 5.37, block2 5.42 /
//                                                  6.26 (*)
//   weights  other         any         oneDNN      CIFAR: 0.85-1.0x (layer4 4x4 55 / 51); demo
//                                                  0.23-0.3x (layer1 1.25 / 0.30, layer4 1.75 / 0.51)
//
// (*) measured on the 2-core Xeon (avx512_core_bf16 too), best of 3 runs, `conv_layers --net
// wrn-10-2 --size 28 --in-channels 1 --batch 224` (bench/RESULTS.md, "The routing table on the
// Xeon"). A 1x1 convolution over few input channels does little arithmetic per pixel (2 C O
// flops) against the blocked layout's reorders of x and y at the layer boundary (C + O floats
// read and written per pixel): with C <= 32 the reorders dominate and the reference's GEMM on
// NCHW, which needs none, wins; from 64 channels on oneDNN does (CIFAR, WRN block3).
//
// An earlier table, measured on CIFAR shapes alone on a slower machine, kept the filter gradient
// of maps under 8x8 on the reference (there the reference's chunked GEMM won on 512-channel 4x4
// maps by 10-20%); on the demo's narrow layers that cost 3-4x, and on this machine oneDNN wins
// both. Changing an entry changes only speed: every pass of every shape is compared with the
// reference under AllOneDnn (tests/conv_fast_test.cpp), and the reference is the reference.
ConvRouting parse_conv_routing(const std::string& text, const std::string& what) {
  for (ConvRouting r : {ConvRouting::Measured, ConvRouting::AllOneDnn, ConvRouting::AllWinograd})
    if (text == conv_routing_name(r)) return r;
  throw std::invalid_argument(what + ": expected measured, onednn or winograd, found '" + text + "'");
}

ConvRouting conv_routing() {
  int r = g_routing.load();
  if (r < 0) {
    const char* env = std::getenv("TESSERA_CONV_ROUTING");
    const std::string text = env && *env ? env : "measured";
    r = static_cast<int>(parse_conv_routing(text, "TESSERA_CONV_ROUTING"));
    g_routing.store(r);
  }
  return static_cast<ConvRouting>(r);
}

void set_conv_routing(ConvRouting r) { g_routing.store(static_cast<int>(r)); }

const char* conv_routing_name(ConvRouting r) {
  switch (r) {
    case ConvRouting::Measured: return "measured";
    case ConvRouting::AllOneDnn: return "onednn";
    case ConvRouting::AllWinograd: return "winograd";
  }
  return "?";
}

bool conv2d_on_onednn(const Conv2dShape& s, ConvPart part) {
  if (conv_routing() != ConvRouting::Measured) return true;
  const bool pointwise = s.kh == 1 && s.kw == 1, large_map = s.ho * s.wo >= 64;
  switch (part) {
    case ConvPart::Forward:
    case ConvPart::Weights: return !(pointwise && large_map && s.c <= 32);
    case ConvPart::Data: return !(pointwise && large_map);
  }
  return true;
}

// Winograd's F(4x4, 3x3) (oneDNN's jit_wino_4x3) against the direct kernel, whole batch, 2
// threads, best of 6 calls, ms forward / data gradient / filter gradient, and Winograd's
// scratchpads in MB (2026-12-03, quiet machine; bench/RESULTS.md "Winograd"):
//
//   shape (batch, in -> out channels, map)  direct                Winograd            scratchpads     asked for
//   CIFAR 64, 3 -> 64, 32x32 (stem)         1.17 / 5.42 / 1.36    4.70 / 3.82 / 3.21  54 / 7 / 10     no: 3 channels
//   CIFAR 64, 64 -> 64, 32x32               21.5 / 20.8 / 24.1    9.3 / 9.3 / 10.6    8 / 8 / 10      yes
//   CIFAR 64, 128 -> 128, 16x16             20.0 / 20.4 / 22.7    9.0 / 8.3 / 8.8     46 / 46 / 53    yes
//   CIFAR 64, 256 -> 256, 8x8               17.7 / 18.1 / 20.8    8.2 / 8.1 / 8.5     35 / 35 / 56    yes
//   CIFAR 64, 512 -> 512, 4x4               16.3 / 15.5 / 22.0    8.7 / 8.4 / 9.5     54 / 54 / 131   yes
//   WRN 224, 1 -> 16, 28x28 (stem)          0.27 / 3.51 / 0.23    2.72 / 2.69 / 2.54  7 / 7 / 10      no: 1 channel
//   WRN 224, 16 -> 32, 28x28                7.09 / 6.87 / 7.09    5.30 / 4.24 / 3.81  7 / 7 / 9       yes
//   WRN 224, 32 -> 32, 28x28                14.0 / 13.9 / 14.1    8.5 / 7.0 / 7.6     7 / 7 / 9       yes
//   WRN 224, 64 -> 64, 14x14                12.8 / 14.0 / 14.6    7.2 / 7.7 / 10.0    8 / 8 / 10      yes
//   WRN 224, 128 -> 128, 7x7                11.6 / 11.6 / 15.2    7.7 / 7.7 / 9.4     42 / 42 / 11    yes
//   demo 128, 16 -> 16, 7x7                 0.10 / 0.10 / 0.13    0.40 / 0.39 / 0.15  9 / 9 / 9       no: 16 channels, 7x7
//   demo 128, 32 -> 32, 4x4                 0.12 / 0.12 / 0.18    0.10 / 0.10 / 0.22  7 / 7 / 10      no: a tie
//   demo 128, 64 -> 64, 2x2                 0.14 / 0.11 / 0.31    0.29 / 0.30 / 0.35  8 / 8 / 10      no: 2x2 map
//   demo 128, 128 -> 128, 1x1               0.09 / 0.07 / 0.31    1.35 / 1.41 / 1.04  13 / 13 / 20    no: 1x1 map
//
// Winograd computes 4x4 output tiles from 6x6 input tiles: on maps under 4x4 most of a tile is
// padding, and with few channels the tile transforms outweigh the saved multiplications. So: 3x3,
// stride 1, 16 or more input channels, an output of at least 8x8, or at least 4x4 with 64 or more
// input channels. The calls' scratch is what kWinogradScratchpadCap weighs (choose_winograd): on
// the 2-core Xeon, CIFAR layer1 runs in slices of 32, layer2 whole, layer3's forward and data
// gradient in slices of 32; layer4 and layer3's filter gradient stay direct.
// Its rounding error is larger than the direct sum's (the transforms scale terms up to 8x and
// add them back); tests/conv_fast_test.cpp bounds it on every model shape.
bool conv2d_wants_winograd(const Conv2dShape& s) {
  const ConvRouting r = conv_routing();
  if (r == ConvRouting::AllOneDnn) return false;
  const bool eligible = s.kh == 3 && s.kw == 3 && s.stride == 1;
  if (r == ConvRouting::AllWinograd) return eligible;
  const int64_t pixels = s.ho * s.wo;
  return eligible && s.c >= 16 && (pixels >= 64 || (pixels >= 16 && s.c >= 64));
}

bool conv2d_runs_dense(const Conv2dShape& s) {
  return conv_routing() == ConvRouting::Measured && conv2d_is_dense(s);
}

// ---- the kernels ---------------------------------------------------------------------------

namespace {

Conv2dShape slice_of(const Conv2dShape& s, int64_t n) {
  Conv2dShape slice = s;
  slice.n = n;
  return slice;
}

// One oneDNN forward over the whole batch of the plan's shape.
void forward_whole(Plan& p, const float* x, const float* w, const float* b, float* y, void* workspace,
                   size_t workspace_bytes) {
  ForwardVariant& v = *p.forward[b ? 1 : 0];
  check_workspace(p.shape, v.bytes, workspace_bytes);
  char* scratch = aligned(workspace);
  try {
    char* pad = scratch + v.scratchpad_offset;
    v.x.to_primitive(x, scratch, pad);
    v.w.to_primitive(w, scratch, pad);
    Args args{{DNNL_ARG_SRC, v.x.bind(x, scratch)},
              {DNNL_ARG_WEIGHTS, v.w.bind(w, scratch)},
              {DNNL_ARG_DST, v.y.bind(y, scratch)},
              {DNNL_ARG_SCRATCHPAD, scratchpad(v.conv.pd, scratch, v.scratchpad_offset)}};
    if (b) args.emplace(DNNL_ARG_BIAS, memory(v.conv.pd.bias_desc(), cpu_engine(), const_cast<float*>(b)));
    v.conv.get().execute(cpu_stream(), args);
    v.y.to_user(y, scratch, pad);
    cpu_stream().wait();
  } catch (const dnnl::error& e) {
    throw std::runtime_error("oneDNN forward of " + shape_text(p.shape) + ": " + e.what());
  }
}

// One oneDNN backward over the whole batch of the plan's shape: the gradients that are not null.
void backward_whole(Plan& p, const float* x, const float* w, const float* dy, float* dx, float* dw,
                    bool accumulate_dx, void* workspace, size_t workspace_bytes) {
  Backward& b = *p.backward;
  check_workspace(p.shape, b.bytes(dx != nullptr, dw != nullptr), workspace_bytes);
  char* scratch = aligned(workspace);
  bool dy_ready[2] = {false, false};  // b.dy holds one operand per part at most (dy_operand)
  // dy in the format a part wants, converted at most once per call.
  auto dy_for = [&](int i, char* pad) {
    const Operand& o = b.dy[static_cast<size_t>(i)];
    if (!dy_ready[static_cast<size_t>(i)]) o.to_primitive(dy, scratch, pad);
    dy_ready[static_cast<size_t>(i)] = true;
    return o.bind(dy, scratch);
  };
  try {
    if (dw) {
      WeightsPart& wp = b.weights;
      char* pad = scratch + wp.scratchpad_offset;
      wp.x.to_primitive(x, scratch, pad);
      wp.conv.get().execute(cpu_stream(), {{DNNL_ARG_SRC, wp.x.bind(x, scratch)},
                                           {DNNL_ARG_DIFF_DST, dy_for(wp.dy, pad)},
                                           {DNNL_ARG_DIFF_WEIGHTS, wp.dw.bind(dw, scratch)},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad(wp.conv.pd, scratch, wp.scratchpad_offset)}});
      wp.dw.to_user(dw, scratch, pad);
    }
    if (dx) {
      DataPart& dp = b.data;
      const Operand& out = accumulate_dx ? dp.dx : dp.dx_set;
      char* pad = scratch + dp.scratchpad_offset;
      dp.w.to_primitive(w, scratch, pad);
      dp.conv.get().execute(cpu_stream(), {{DNNL_ARG_DIFF_DST, dy_for(dp.dy, pad)},
                                           {DNNL_ARG_WEIGHTS, dp.w.bind(w, scratch)},
                                           {DNNL_ARG_DIFF_SRC, out.bind(dx, scratch)},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad(dp.conv.pd, scratch, dp.scratchpad_offset)}});
      out.to_user(dx, scratch, pad);
    }
    cpu_stream().wait();
  } catch (const dnnl::error& e) {
    throw std::runtime_error("oneDNN backward of " + shape_text(p.shape) + ": " + e.what());
  }
}

}  // namespace

void conv2d_workspace_size(const Conv2dShape& s, ConvPass pass, size_t* bytes) {
  if (conv2d_runs_dense(s)) {
    *bytes = dense_workspace_size(s);
    return;
  }
  // The parts run one after the other in the same scratch: the largest of their needs.
  size_t reference = 0, own = 0;
  if (pass == ConvPass::Forward) {
    if (conv2d_on_onednn(s, ConvPart::Forward)) {
      Plan& p = plan_for(s, true, false);
      Plan& runs = p.chunk[kForward] < s.n ? plan_for(slice_of(s, p.chunk[kForward]), true, false) : p;
      own = std::max(runs.forward[0]->bytes, runs.forward[1]->bytes);
    } else {
      kernels::cpu::conv2d_workspace_size(s, pass, &reference);
    }
  } else {
    const bool data = conv2d_on_onednn(s, ConvPart::Data), weights = conv2d_on_onednn(s, ConvPart::Weights);
    if (data || weights) {
      Plan& p = plan_for(s, false, true);
      const bool data_sliced = data && p.chunk[kData] < s.n, weights_sliced = weights && p.chunk[kWeights] < s.n;
      const bool data_whole = data && !data_sliced, weights_whole = weights && !weights_sliced;
      if (data_whole || weights_whole) own = p.backward->bytes(data_whole, weights_whole);
      if (data_sliced)
        own = std::max(own, plan_for(slice_of(s, p.chunk[kData]), false, true).backward->bytes(true, false));
      if (weights_sliced)
        own = std::max(own, plan_for(slice_of(s, p.chunk[kWeights]), false, true).backward->bytes(false, true));
    }
    if (!data || !weights) kernels::cpu::conv2d_workspace_size(s, pass, &reference);
  }
  *bytes = std::max(reference, own);
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    void* workspace, size_t workspace_bytes) {
  if (conv2d_runs_dense(s)) {
    check_workspace(s, dense_workspace_size(s), workspace_bytes);
    return dense_forward(s, x, w, b, y, workspace);
  }
  if (!conv2d_on_onednn(s, ConvPart::Forward))
    return kernels::cpu::conv2d_forward(s, x, w, b, y, workspace, workspace_bytes);
  Plan& p = plan_for(s, true, false);
  const int64_t n = p.chunk[kForward];
  if (n == s.n) return forward_whole(p, x, w, b, y, workspace, workspace_bytes);
  // Winograd over slices of the batch (NCHW: a slice is a contiguous run of samples).
  Plan& slice = plan_for(slice_of(s, n), true, false);
  for (int64_t i = 0; i < s.n; i += n)
    forward_whole(slice, x + i * s.c * s.h * s.w, w, b, y + i * s.o * s.ho * s.wo, workspace, workspace_bytes);
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, bool accumulate_dx, void* workspace, size_t workspace_bytes) {
  if (conv2d_runs_dense(s)) {
    check_workspace(s, dense_workspace_size(s), workspace_bytes);
    return dense_backward(s, x, w, dy, dx, dw, db, accumulate_dx, workspace);
  }
  // The reference's parts first (with the bias gradient), then oneDNN's; both add into their outputs.
  float* own_dx = dx && conv2d_on_onednn(s, ConvPart::Data) ? dx : nullptr;
  float* own_dw = dw && conv2d_on_onednn(s, ConvPart::Weights) ? dw : nullptr;
  float* reference_dx = own_dx ? nullptr : dx;
  float* reference_dw = own_dw ? nullptr : dw;
  if (reference_dx || reference_dw)
    kernels::cpu::conv2d_backward(s, x, w, dy, reference_dx, reference_dw, db, accumulate_dx, workspace,
                                  workspace_bytes);
  else if (db)
    kernels::cpu::conv2d_bias_gradient(s, dy, db);
  if (!own_dx && !own_dw) return;
  Plan& p = plan_for(s, false, true);
  const int64_t data_n = p.chunk[kData], weights_n = p.chunk[kWeights];
  float* whole_dx = data_n == s.n ? own_dx : nullptr;
  float* whole_dw = weights_n == s.n ? own_dw : nullptr;
  if (whole_dx || whole_dw) backward_whole(p, x, w, dy, whole_dx, whole_dw, accumulate_dx, workspace, workspace_bytes);
  // Winograd over slices of the batch: each slice's dx is its own rows; every slice adds into dw.
  const int64_t x_sample = s.c * s.h * s.w, y_sample = s.o * s.ho * s.wo;
  auto sliced = [&](int64_t n, float* slice_dx, float* slice_dw) {
    Plan& slice = plan_for(slice_of(s, n), false, true);
    for (int64_t i = 0; i < s.n; i += n)
      backward_whole(slice, x + i * x_sample, w, dy + i * y_sample, slice_dx ? slice_dx + i * x_sample : nullptr,
                     slice_dw, accumulate_dx, workspace, workspace_bytes);
  };
  float* sliced_dx = whole_dx ? nullptr : own_dx;
  float* sliced_dw = whole_dw ? nullptr : own_dw;
  if (sliced_dx && sliced_dw && data_n == weights_n) return sliced(data_n, sliced_dx, sliced_dw);
  if (sliced_dw) sliced(weights_n, nullptr, sliced_dw);
  if (sliced_dx) sliced(data_n, sliced_dx, nullptr);
}

// ---- what the tier says about itself (kernels/onednn/onednn.h) -----------------------------

bool runtime_is_openmp() { return dnnl_version()->cpu_runtime == DNNL_RUNTIME_OMP; }

std::string runtime_description() {
  const dnnl_version_t* v = dnnl_version();
  const char* rt = v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP"
                   : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                   : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                        : "other";
  const char* isa = "other";
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: isa = "sse41"; break;
    case dnnl::cpu_isa::avx: isa = "avx"; break;
    case dnnl::cpu_isa::avx2: isa = "avx2"; break;
    case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
    case dnnl::cpu_isa::avx512_core_vnni: isa = "avx512_core_vnni"; break;
    case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
    case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
    default: break;
  }
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         " (cpu runtime " + rt + ", isa " + isa + ", layout " + layout_name(layout()) + ", routing " +
         conv_routing_name(conv_routing()) + ")";
}

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Blocked: return "blocked";
    case Layout::Plain: return "plain";
    case Layout::Nhwc: return "nhwc";
  }
  return "?";
}

Layout layout() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().layout;
}

void set_layout(Layout l) {
  std::lock_guard<std::mutex> lock(cache().mu);
  cache().layout = l;
  cache().drop_plans();
}

size_t winograd_scratchpad_cap() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().winograd_cap;
}

void set_winograd_scratchpad_cap(size_t bytes) {
  std::lock_guard<std::mutex> lock(cache().mu);
  cache().winograd_cap = bytes;
  cache().drop_plans();
}

size_t conv2d_winograd_call_scratch(const Conv2dShape& s, ConvPart part) {
  try {
    return winograd_call_scratch(descs_of(s, layout()), static_cast<int>(part));
  } catch (const dnnl::error&) {
    return 0;  // not offered for this shape
  }
}

size_t conv2d_plan_count() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().plans.size();
}

std::vector<Conv2dShape> conv2d_plan_shapes() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().shapes;
}

void clear_conv2d_plans() {
  std::lock_guard<std::mutex> lock(cache().mu);
  cache().drop_plans();
}

std::string conv2d_implementations(const Conv2dShape& s) {
  if (conv2d_runs_dense(s)) return "fwd dense:sgemm, data dense:sgemm, weights dense:sgemm";
  Plan& p = plan_for(s, true, true);
  auto name = [&](int part) {
    const int64_t n = p.chunk[static_cast<size_t>(part)];
    Plan& runs = n < s.n ? plan_for(slice_of(s, n), true, true) : p;
    std::string text = part == kForward ? runs.forward[0]->conv.pd.impl_info_str()
                       : part == kData  ? runs.backward->data.conv.pd.impl_info_str()
                                        : runs.backward->weights.conv.pd.impl_info_str();
    if (n < s.n) text += " (" + std::to_string(n) + " samples per call)";
    return text;
  };
  return "fwd " + name(kForward) + ", data " + name(kData) + ", weights " + name(kWeights);
}

}  // namespace kernels::onednn
