// The CPU's fast tier: kernels backed by oneDNN (Debian's libdnnl, 2.6: the oneDNN generation
// PyTorch 1.13 runs on the CPU). It mirrors kernels/cuda on the GPU: the same signatures as the
// reference in kernels/cpu (the declarations are shared, kernels/<family>.h expands them in
// namespace kernels::onednn too), primitives made once per shape and cached like cuDNN's plans,
// scratch from the caller's workspace (oneDNN's user-managed scratchpad), and the threads of the
// engine's OpenMP pool (Debian builds libdnnl on OpenMP: its parallel regions are the same
// libgomp team the reference kernels use, so the two never compete for the cores).
//
// Kernels so far: convolution forward, data and filter gradients (kernels/onednn/conv.cpp), each
// pass routed to oneDNN (direct or Winograd) or to the reference by a measured table
// (ConvRouting below), and on maps within the kernel's reach one dense GEMM per pass on
// oneDNN's sgemm (kernels/onednn/conv_dense.cpp).
// Pooling and BatchNorm stay on the reference tier: their kernels are memory-bound passes that
// would need the same layer-boundary reorders the convolution pays (see conv.cpp's header), and
// once the reference BatchNorm read memory in order (kernels/cpu/batch_norm.cpp: 8x faster on
// BatchNorm1d) it was no longer above a few percent of a step (bench/RESULTS.md, 2026-12-03).
//
// This file holds what the tier says about itself: which library and ISA it runs, the plan
// cache (for tests and benchmarks), and the activation layout the primitives are asked for
// (a benchmark knob; the default is what measured fastest, bench/RESULTS.md).
//
// Built only when oneDNN is found (Makefile: ONEDNN=1, the macro TESSERA_ONEDNN); engine code
// that calls it checks the macro (engine/cpu_kernels.h).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/conv.h"

namespace kernels::onednn {

// "oneDNN 2.6.3 (cpu runtime OpenMP, isa avx512_core)": the library the tier runs on.
std::string runtime_description();
// True when the library runs its CPU primitives on OpenMP (so on the engine's thread pool).
bool runtime_is_openmp();

// How activations (x, y, dx, dy) are handed to the primitives. Weights follow: `Blocked`
// lets the primitive choose their format too; `Plain` keeps them in OIHW.
enum class Layout {
  Blocked,  // format_tag::any: the primitive picks (nChw16c on AVX-512); reorders at the layer boundary
  Plain,    // nchw / oihw as the engine holds them: no reorders, whatever kernel oneDNN has for them
  Nhwc,     // nhwc activations, weights chosen by the primitive
};
const char* layout_name(Layout l);
Layout layout();
// Changes the layout of primitives made from now on and drops the cached plans. Not for use
// while a step runs (a workspace size asked before the change would not match).
void set_layout(Layout l);

// Per-pass routing. The fast tier's convolution runs each pass on whichever implementation
// measured faster for that kind of shape on the 2-core AVX-512 machines (bench/RESULTS.md,
// "per-pass routing" on the EPYC, "The routing table on the Xeon"): oneDNN or the reference (im2col + OpenBLAS), and on oneDNN with its direct
// algorithm or, for 3x3 stride-1 convolutions on large enough maps, Winograd's F(4x4, 3x3)
// (1.9-2.6x faster on the CIFAR ResNet's layers; a larger rounding error, bounded in
// tests/conv_fast_test.cpp). The table and the reason for each entry are in conv2d_on_onednn and
// conv2d_wants_winograd (kernels/onednn/conv.cpp). `AllOneDnn` sends every pass to oneDNN's
// direct algorithm and `AllWinograd` every pass to oneDNN with Winograd wherever oneDNN offers
// it: for measuring the table again on another machine, and for the tests that compare
// oneDNN's kernels with the reference on every shape.
enum class ConvPart { Forward, Data, Weights };
enum class ConvRouting { Measured, AllOneDnn, AllWinograd };
// First call: from TESSERA_CONV_ROUTING ("measured" | "onednn" | "winograd"; unset: measured);
// an unknown value throws std::invalid_argument naming it.
ConvRouting conv_routing();
void set_conv_routing(ConvRouting r);
const char* conv_routing_name(ConvRouting r);  // "measured" | "onednn" | "winograd"
// Parses a routing name; throws std::invalid_argument("<what>: expected ..., found '<text>'").
ConvRouting parse_conv_routing(const std::string& text, const std::string& what);
// Whether `part` of shape `s` runs on oneDNN under the current routing.
bool conv2d_on_onednn(const Conv2dShape& s, ConvPart part);
// Whether the current routing asks oneDNN for Winograd on shape `s` (all three passes: the
// backward primitives take the forward's as their hint). oneDNN may still decline a shape (its
// Winograd wants channel counts its blocking handles); the plan then runs direct, and
// conv2d_implementations says which ran ("jit_wino_4x3:avx512_core" or "jit:avx512_core").
bool conv2d_wants_winograd(const Conv2dShape& s);
// Whether the current routing runs shape `s` as one dense GEMM per pass, with no oneDNN
// convolution primitive (kernels/onednn/conv_dense.cpp): under the measured routing, every shape
// whose output pixels' windows each cover the whole input map (3x3 on the 1x1 and 2x2 maps of a
// ResNet's last stages on 28 px images), where the direct kernels spend most products on padding.
bool conv2d_runs_dense(const Conv2dShape& s);

// Under the measured routing a pass runs Winograd only if its call's scratch (oneDNN's scratchpad
// plus the blocked copies of the operands it converts) fits a cap (32 MiB), over the whole batch
// or over slices of it (n / 2, n / 4, ... down to 8 samples, each slice a call of its own);
// otherwise it runs direct (kernels/onednn/conv.cpp, choose_winograd). The scratchpad depends on
// the CPU's caches and the thread count, so which passes slice differs between machines: tests
// read the sizes and set a cap of their own. Setting drops the plans.
size_t winograd_scratchpad_cap();
void set_winograd_scratchpad_cap(size_t bytes);
// Bytes of scratch one Winograd call of a pass of `s` needs at the current layout and thread
// count, what the cap weighs (the forward: the larger of its variants with and without bias); 0
// where oneDNN offers no Winograd for the shape.
size_t conv2d_winograd_call_scratch(const Conv2dShape& s, ConvPart part);

// The convolution plans cached so far: one per (shape, thread count, layout, Winograd asked); a
// pass that runs Winograd on slices of the batch adds the plan of the slice's shape.
size_t conv2d_plan_count();
std::vector<Conv2dShape> conv2d_plan_shapes();  // distinct shapes, in the order first seen
void clear_conv2d_plans();
// oneDNN's implementation names for the three passes of a shape (makes the plan if needed):
// "fwd jit:avx512_core, data jit:avx512_core, weights jit:avx512_core".
std::string conv2d_implementations(const Conv2dShape& s);

}  // namespace kernels::onednn
