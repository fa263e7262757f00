// CPU fast tier of kernels/conv.h: oneDNN's direct convolution (forward, data gradient, filter
// gradient), the CPU mirror of kernels/cuda/conv.cu. Each pass of a shape runs on oneDNN or on
// the reference, whichever measured faster (conv2d_on_onednn: the table and its reasons). Same math as the reference
// (kernels/cpu/conv.cpp), float32 throughout; the sums run in another order, so results
// differ from the reference by float32 rounding (tests/conv_fast_test.cpp bounds it).
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
// engine's one scratch region, engine/workspace.h), and conv2d_workspace_size reports their sum.
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

// Buffers of one call placed one after another in the scratch, each on a cache line.
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
};

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

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool bias) {
  const dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.x_any, d.w_any,
      bias ? d.bias : memory::desc(), d.y_any, d.strides, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(desc, attributes(), cpu_engine());
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
  v.bytes = carve.used;
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
  size_t bytes = 0;
};

int dy_operand(Backward& b, const memory::desc& user, const memory::desc& md, Carve& shared) {
  for (size_t i = 0; i < b.dy.size(); ++i)
    if (b.dy[i].md == md) return static_cast<int>(i);
  b.dy.push_back(Operand::input(user, md, shared));
  return static_cast<int>(b.dy.size()) - 1;
}

Backward make_backward(const Descs& d) {
  const auto hint = forward_pd(d, /*bias=*/false);
  const dnnl::convolution_backward_data::desc data_desc(dnnl::algorithm::convolution_direct, d.x_any, d.w_any,
                                                        d.y_any, d.strides, d.pad_l, d.pad_r);
  dnnl::convolution_backward_data::primitive_desc data_pd(data_desc, attributes(), cpu_engine(), hint);
  const dnnl::convolution_backward_weights::desc weights_desc(dnnl::algorithm::convolution_direct, d.x_any,
                                                              d.w_any, d.y_any, d.strides, d.pad_l, d.pad_r);
  dnnl::convolution_backward_weights::primitive_desc weights_pd(weights_desc, attributes(), cpu_engine(), hint);

  Backward b;
  Carve shared;  // the dy buffers
  const int data_dy = dy_operand(b, d.y, data_pd.diff_dst_desc(), shared);
  const int weights_dy = dy_operand(b, d.y, weights_pd.diff_dst_desc(), shared);

  Carve data_carve{shared.used};
  DataPart dp{{data_pd, std::nullopt}, data_dy, {}, {}, {}, 0, 0};
  dp.w = Operand::input(d.w, data_pd.weights_desc(), data_carve);
  Carve before_dx = data_carve;  // a call runs one of dx, dx_set: they share the staging buffer
  dp.dx = Operand::output(d.x, data_pd.diff_src_desc(), /*accumulate=*/true, data_carve);
  dp.dx_set = Operand::output(d.x, data_pd.diff_src_desc(), /*accumulate=*/false, before_dx);
  dp.scratchpad_bytes = std::max({data_pd.scratchpad_desc().get_size(), dp.w.pad_bytes(), dp.dx.pad_bytes(),
                                  dp.dx_set.pad_bytes(), b.dy[static_cast<size_t>(data_dy)].pad_bytes()});
  dp.scratchpad_offset = data_carve.take(dp.scratchpad_bytes);
  b.data = std::move(dp);

  Carve carve{shared.used};
  WeightsPart& wp = b.weights;
  wp.conv.pd = weights_pd;
  wp.dy = weights_dy;
  wp.x = Operand::input(d.x, weights_pd.src_desc(), carve);
  wp.dw = Operand::output(d.w, weights_pd.diff_weights_desc(), /*accumulate=*/true, carve);
  wp.scratchpad_bytes = std::max({weights_pd.scratchpad_desc().get_size(), wp.x.pad_bytes(), wp.dw.pad_bytes(),
                                  b.dy[static_cast<size_t>(wp.dy)].pad_bytes()});
  wp.scratchpad_offset = carve.take(wp.scratchpad_bytes);
  b.bytes = std::max(data_carve.used, carve.used);
  return b;
}

// ---- the plan cache ------------------------------------------------------------------------
struct Plan {
  Conv2dShape shape;
  Descs d;
  std::optional<ForwardVariant> forward[2];  // [bias]
  std::optional<Backward> backward;
};

using PlanKey = std::array<int64_t, 11>;  // n, c, h, w, o, kh, kw, stride, pad, threads, layout

struct Cache {
  std::mutex mu;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  std::vector<Conv2dShape> shapes;  // distinct, in order first seen
  Layout layout = Layout::Blocked;
};
Cache& cache() {
  static Cache c;
  return c;
}

// The plan of a shape with the requested passes made. Plans live for the process (a handful
// per model), like the cuDNN plans; the pointer stays valid until clear_conv2d_plans().
Plan& plan_for(const Conv2dShape& s, bool forward, bool backward) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const PlanKey key{s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.pad, omp_get_max_threads(),
                    static_cast<int64_t>(c.layout)};
  auto it = c.plans.find(key);
  try {
    if (it == c.plans.end()) {
      auto p = std::make_unique<Plan>();
      p->shape = s;
      p->d = descs_of(s, c.layout);
      it = c.plans.emplace(key, std::move(p)).first;
      if (std::find(c.shapes.begin(), c.shapes.end(), s) == c.shapes.end()) c.shapes.push_back(s);
    }
    Plan& p = *it->second;
    if (forward && !p.forward[0]) {
      p.forward[0] = make_forward(p.d, false);
      p.forward[1] = make_forward(p.d, true);
    }
    if (backward && !p.backward) p.backward = make_backward(p.d);
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
//   forward  any           any         oneDNN      3x3: 0.2-0.9x the reference (demo layer1 1.18 /
//                                                  0.24); 1x1: a tie on CIFAR (3.2-6.5 / 3.1-5.8),
//                                                  0.5x on the demo (0.10-0.13 / 0.05-0.07)
//   data     3x3, 7x7      any         oneDNN      0.1-1.0x (demo layer2 1.18 / 0.26)
//   data     1x1           >= 8x8      reference   CIFAR layer2 ds 4.3 / 7.8, layer3 ds 3.5 / 4.4
//   data     1x1           < 8x8       oneDNN      CIFAR layer4 ds 3.3 / 3.0, demo 0.12-0.19 / 0.05-0.06
//   weights  any           any         oneDNN      CIFAR: 0.85-1.0x (layer4 4x4 55 / 51); demo
//                                                  0.23-0.3x (layer1 1.25 / 0.30, layer4 1.75 / 0.51)
//
// An earlier table, measured on CIFAR shapes alone on a slower machine, kept the filter gradient
// of maps under 8x8 on the reference (there the reference's chunked GEMM won on 512-channel 4x4
// maps by 10-20%); on the demo's narrow layers that cost 3-4x, and on this machine oneDNN wins
// both. Changing an entry changes only speed: every pass of every shape is compared with the
// reference under AllOneDnn (tests/conv_fast_test.cpp), and the reference is the reference.
ConvRouting conv_routing() {
  int r = g_routing.load();
  if (r < 0) {
    const char* env = std::getenv("TESSERA_CONV_ROUTING");
    const std::string text = env ? env : "";
    if (text.empty() || text == "measured") r = static_cast<int>(ConvRouting::Measured);
    else if (text == "onednn") r = static_cast<int>(ConvRouting::AllOneDnn);
    else throw std::invalid_argument("TESSERA_CONV_ROUTING: expected measured or onednn, found '" + text + "'");
    g_routing.store(r);
  }
  return static_cast<ConvRouting>(r);
}

void set_conv_routing(ConvRouting r) { g_routing.store(static_cast<int>(r)); }

const char* conv_routing_name(ConvRouting r) { return r == ConvRouting::AllOneDnn ? "onednn" : "measured"; }

bool conv2d_on_onednn(const Conv2dShape& s, ConvPart part) {
  if (conv_routing() == ConvRouting::AllOneDnn) return true;
  const bool pointwise = s.kh == 1 && s.kw == 1;
  switch (part) {
    case ConvPart::Forward: return true;
    case ConvPart::Data: return !(pointwise && s.ho * s.wo >= 64);
    case ConvPart::Weights: return true;
  }
  return true;
}

// ---- the kernels ---------------------------------------------------------------------------

void conv2d_workspace_size(const Conv2dShape& s, ConvPass pass, size_t* bytes) {
  // The parts run one after the other in the same scratch: the larger of the two tiers' needs.
  size_t reference = 0, own = 0;
  if (pass == ConvPass::Forward) {
    if (conv2d_on_onednn(s, ConvPart::Forward)) own = std::max(plan_for(s, true, false).forward[0]->bytes,
                                                               plan_for(s, true, false).forward[1]->bytes);
    else kernels::cpu::conv2d_workspace_size(s, pass, &reference);
  } else {
    const bool data = conv2d_on_onednn(s, ConvPart::Data), weights = conv2d_on_onednn(s, ConvPart::Weights);
    if (data || weights) own = plan_for(s, false, true).backward->bytes;
    if (!data || !weights) kernels::cpu::conv2d_workspace_size(s, pass, &reference);
  }
  *bytes = std::max(reference, own);
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    void* workspace, size_t workspace_bytes) {
  if (!conv2d_on_onednn(s, ConvPart::Forward))
    return kernels::cpu::conv2d_forward(s, x, w, b, y, workspace, workspace_bytes);
  ForwardVariant& v = *plan_for(s, true, false).forward[b ? 1 : 0];
  check_workspace(s, v.bytes, workspace_bytes);
  char* scratch = static_cast<char*>(workspace);
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
    throw std::runtime_error("oneDNN forward of " + shape_text(s) + ": " + e.what());
  }
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, bool accumulate_dx, void* workspace, size_t workspace_bytes) {
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
  Backward& b = *plan_for(s, false, true).backward;
  check_workspace(s, b.bytes, workspace_bytes);
  char* scratch = static_cast<char*>(workspace);
  std::vector<bool> dy_ready(b.dy.size(), false);
  // dy in the format a part wants, converted at most once per call.
  auto dy_for = [&](int i, char* pad) {
    const Operand& o = b.dy[static_cast<size_t>(i)];
    if (!dy_ready[static_cast<size_t>(i)]) o.to_primitive(dy, scratch, pad);
    dy_ready[static_cast<size_t>(i)] = true;
    return o.bind(dy, scratch);
  };
  try {
    if (own_dw) {
      WeightsPart& wp = b.weights;
      char* pad = scratch + wp.scratchpad_offset;
      wp.x.to_primitive(x, scratch, pad);
      wp.conv.get().execute(cpu_stream(), {{DNNL_ARG_SRC, wp.x.bind(x, scratch)},
                                           {DNNL_ARG_DIFF_DST, dy_for(wp.dy, pad)},
                                           {DNNL_ARG_DIFF_WEIGHTS, wp.dw.bind(dw, scratch)},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad(wp.conv.pd, scratch, wp.scratchpad_offset)}});
      wp.dw.to_user(dw, scratch, pad);
    }
    if (own_dx) {
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
    throw std::runtime_error("oneDNN backward of " + shape_text(s) + ": " + e.what());
  }
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
  cache().plans.clear();
  cache().shapes.clear();
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
  cache().plans.clear();
  cache().shapes.clear();
}

std::string conv2d_implementations(const Conv2dShape& s) {
  Plan& p = plan_for(s, true, true);
  return std::string("fwd ") + p.forward[0]->conv.pd.impl_info_str() + ", data " +
         p.backward->data.conv.pd.impl_info_str() + ", weights " + p.backward->weights.conv.pd.impl_info_str();
}

}  // namespace kernels::onednn
