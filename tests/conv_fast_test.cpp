// The CPU's fast tier (kernels/onednn, oneDNN) against the reference (kernels/cpu, im2col +
// OpenBLAS) on every convolution shape of the models the programs train, and the switch that
// picks the tier (engine/cpu_kernels.h). The shape comparisons run with every pass routed to
// oneDNN (ConvRouting::AllOneDnn), so each of oneDNN's kernels meets the reference on every
// shape whatever the measured table sends where, and again with Winograd on every 3x3 stride-1
// shape oneDNN takes (ConvRouting::AllWinograd); the table itself and the mixed routes are
// tested apart (ConvFast.MeasuredRouting*), and the three activation layouts on one shape
// (ConvFast.EveryLayoutAddsAndWritesGradients).
//
// Shapes: each model is built and run forward once on the fast tier at batch 2 and its input
// size; the fast tier's plan cache then lists exactly the shapes that model's convolutions have
// (kernels::onednn::conv2d_plan_shapes), so the list cannot drift from the models.
//
// Tolerance. Both tiers compute the same float32 sums in different orders (sgemm blocks against
// oneDNN's register blocking), so they agree to rounding, not bit for bit. For a sum of L terms
// of random sign, the rounding error of either order is about sqrt(L) u times the size of the
// terms, relative to the result, with u = 2^-24 (Higham & Mary's probabilistic bound; the
// worst case, L u, is never approached by blocked sums). L is C KH KW for y and dx... exactly:
// C KH KW terms per output (forward), O KH KW per input gradient, N HO WO per filter gradient
// and N HO WO per bias gradient. The test takes relative error in the 2-norm over the whole
// tensor, ||fast - ref|| / ||ref||, and allows 4 sqrt(L) u: the two tiers' errors add (x2) and
// the bound's constant is taken as 2. Measured errors are 5-20x below that (the test prints the
// worst ratio per model). A wrong index, a missing term or a lost accumulation gives errors of
// order 1 / sqrt(terms) or more, orders of magnitude above it.
//
// Winograd (F(4x4, 3x3): 6x6 input tiles, 4x4 output tiles) computes the same sums through tile
// transforms whose constants (up to 8 and 1/24 for F(4x4, 3x3)) let rounding errors grow more
// than a direct sum's: measured 0.32-0.60 of the bound above on the models' shapes, against
// 0.08-0.13 for oneDNN's direct kernels (2026-12-03). Its shapes are allowed 2x the bound
// (kWinogradScale), still far below what a wrong tile or a lost term would give.
//
// Accumulation: gradients are added into buffers that already hold random values, as every
// backward does; the comparison is on what was added (result - initial value), so it is not
// diluted by the initial values.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "kernels/conv.h"
#include "models/model.h"
#include "tests/fast_tier_compare.h"
#include "tests/program_runs.h"
#if TESSERA_ONEDNN
#include "kernels/onednn/onednn.h"
#endif

namespace tessera {
namespace {

// ---- the switch (every build) --------------------------------------------------------------

TEST(CpuKernels, BuildWithoutOneDnnRunsTheReferenceAndSaysSo) {
  std::string note;
  EXPECT_EQ(resolve_cpu_kernels(CpuKernels::Fast, /*have_onednn=*/false, &note), CpuKernels::Reference);
  EXPECT_NE(note.find("reference"), std::string::npos) << note;
  EXPECT_NE(note.find("no oneDNN"), std::string::npos) << note;
  EXPECT_NE(note.find("libdnnl-dev"), std::string::npos) << note;
  EXPECT_EQ(resolve_cpu_kernels(CpuKernels::Reference, false, &note), CpuKernels::Reference);
  EXPECT_EQ(resolve_cpu_kernels(CpuKernels::Fast, true, &note), CpuKernels::Fast);
  EXPECT_NE(note.find("fast"), std::string::npos) << note;

  // This build: what the Makefile detected is what the engine reports.
  EXPECT_EQ(onednn_built(), TESSERA_ONEDNN != 0);
  CpuKernelsScope scope(CpuKernels::Fast);
  EXPECT_EQ(cpu_kernels(), onednn_built() ? CpuKernels::Fast : CpuKernels::Reference);
  const std::string line = select_cpu_kernels("fast");
  std::printf("%s\n", line.c_str());
  if (!onednn_built()) {
    EXPECT_NE(line.find("no oneDNN"), std::string::npos) << line;
  }
  EXPECT_THROW(select_cpu_kernels("quick"), UsageError);
}

TEST(CpuKernels, EnvironmentGivesTheFlagItsDefault) {
  const char* saved = std::getenv("TESSERA_CPU_KERNELS");
  const std::string saved_value = saved ? saved : "";
  ::setenv("TESSERA_CPU_KERNELS", "reference", 1);
  EXPECT_EQ(default_cpu_kernels_flag(), "reference");
  ::setenv("TESSERA_CPU_KERNELS", "quick", 1);
  try {
    default_cpu_kernels_flag();
    ADD_FAILURE() << "a bad TESSERA_CPU_KERNELS was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("TESSERA_CPU_KERNELS"), std::string::npos) << e.what();
  }
  ::unsetenv("TESSERA_CPU_KERNELS");
  EXPECT_EQ(default_cpu_kernels_flag(), "fast");
  if (saved) ::setenv("TESSERA_CPU_KERNELS", saved_value.c_str(), 1);
}

// The built bench program: the environment picks the tier, the flag overrides it, and the
// profile of the step names the kernels of the tier that ran.
TEST(CpuKernels, FlagAndEnvironmentSwitchTheProgramsConvolutions) {
  const std::vector<std::string> step = {"train-step", "--arch", "resnet18", "--stem", "cifar", "--width", "4",
                                         "--size", "8", "--batch", "2", "--steps", "1", "--warmup", "0",
                                         "--device", "cpu", "--profile-steps", "0:1"};
  const char* saved = std::getenv("TESSERA_CPU_KERNELS");
  const std::string saved_value = saved ? saved : "";
  ::setenv("TESSERA_CPU_KERNELS", "reference", 1);
  const program_runs::Result by_env = program_runs::run("bench", step);
  std::vector<std::string> flagged = step;
  flagged.insert(flagged.end(), {"--cpu-kernels", "fast"});
  const program_runs::Result by_flag = program_runs::run("bench", flagged);
  if (saved) ::setenv("TESSERA_CPU_KERNELS", saved_value.c_str(), 1);
  else ::unsetenv("TESSERA_CPU_KERNELS");

  ASSERT_EQ(by_env.status, 0) << by_env.output;
  EXPECT_NE(by_env.output.find("cpu kernels: reference"), std::string::npos) << by_env.output;
  EXPECT_NE(by_env.output.find("\"cpu_kernels\":\"reference\""), std::string::npos) << by_env.output;
  EXPECT_NE(by_env.output.find("conv2d_forward"), std::string::npos) << by_env.output;
  EXPECT_EQ(by_env.output.find("conv2d_forward_onednn"), std::string::npos) << by_env.output;

  ASSERT_EQ(by_flag.status, 0) << by_flag.output;
  if (onednn_built()) {
    EXPECT_NE(by_flag.output.find("cpu kernels: fast (oneDNN"), std::string::npos) << by_flag.output;
    EXPECT_NE(by_flag.output.find("\"cpu_kernels\":\"fast\""), std::string::npos) << by_flag.output;
    EXPECT_NE(by_flag.output.find("conv2d_forward_onednn"), std::string::npos) << by_flag.output;
    EXPECT_NE(by_flag.output.find("conv2d_backward_onednn"), std::string::npos) << by_flag.output;
  } else {
    EXPECT_NE(by_flag.output.find("no oneDNN"), std::string::npos) << by_flag.output;
  }
}

#if TESSERA_ONEDNN

// In-process: the op runs the kernels of the tier that is set (the profiler's kernel names).
TEST(CpuKernels, OpRunsTheTierThatIsSet) {
  for (CpuKernels tier : {CpuKernels::Reference, CpuKernels::Fast}) {
    CpuKernelsScope scope(tier);
    Workspace ws(Device::CPU);
    Graph g(ws);
    profile::Profiler prof(profile::StepWindow::parse("0:1"), Device::CPU, "", /*print=*/false);
    prof.begin_step(0);
    const Tensor xv = ws.alloc(Shape{2, 3, 6, 6}), wv = ws.alloc(Shape{4, 3, 3, 3});
    fill_value(xv, 0.5f);
    fill_value(wv, 0.25f);
    Var* y = ops::conv2d(g, g.input(xv, "x"), g.param(wv, ws.alloc(wv.shape), "w"), nullptr, 1, 1);
    g.backward(ops::mean(g, y));
    prof.end_step(0);
    ASSERT_TRUE(prof.window_done());
    std::vector<std::string> kernels;
    for (const auto& row : prof.report()->rows)
      if (row.kernel.rfind("conv2d_", 0) == 0) kernels.push_back(row.kernel);
    std::sort(kernels.begin(), kernels.end());
    const std::string suffix = tier == CpuKernels::Fast ? "_onednn" : "";
    const std::vector<std::string> expected = {"conv2d_backward" + suffix, "conv2d_forward" + suffix,
                                               "conv2d_workspace_size" + suffix};
    EXPECT_EQ(kernels, expected) << cpu_kernels_name(tier) << "\n" << prof.report()->table();
  }
}

// ---- the fast tier against the reference, shape by shape ------------------------------------

std::vector<float> uniform(size_t n, uint64_t step) {
  std::vector<float> v(n);
  kernels::PhiloxState rng(31, kernels::philox_subsequence(kernels::kStreamTest, step), 0);
  for (float& x : v) x = 2.0f * rng.uniform() - 1.0f;
  return v;
}

std::string text(const kernels::Conv2dShape& s) {
  return cat("x (", s.n, ",", s.c, ",", s.h, ",", s.w, ") w (", s.o, ",", s.c, ",", s.kh, ",", s.kw, ") stride ",
             s.stride, " pad ", s.pad);
}

// The shape of x (n, c, h, w) * w (o, c, kh, kw) with the given stride and padding.
kernels::Conv2dShape shape_of(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                              int64_t stride, int64_t pad) {
  kernels::Conv2dShape s;
  s.n = n, s.c = c, s.h = h, s.w = w, s.o = o, s.kh = kh, s.kw = kw, s.stride = stride, s.pad = pad;
  s.ho = (h + 2 * pad - kh) / stride + 1;
  s.wo = (w + 2 * pad - kw) / stride + 1;
  return s;
}

using testing::relative_error;
using testing::sum_tolerance;
// Winograd's allowance over that (the header says why).
constexpr double kWinogradScale = 2.0;

// Scratch as the engine hands it: exactly the size the tier asked for, filled with NaN (a kernel
// that reads scratch it did not write shows it), with a guard after it that must stay intact.
// It starts 16 bytes past a 64-byte line, on purpose: the engine's workspace is 256-byte aligned,
// but a kernel must not depend on that (oneDNN's Winograd crashed on a scratchpad off its line).
struct Scratch {
  static constexpr size_t kGuard = 1024;  // floats
  std::vector<float> buf;
  size_t start = 0, bytes = 0;
  explicit Scratch(size_t b) : buf(b / sizeof(float) + 1 + kGuard + 16), bytes(b) {
    while ((reinterpret_cast<uintptr_t>(buf.data() + start) % 64) != 16) ++start;
    std::fill(buf.begin(), buf.end(), std::numeric_limits<float>::quiet_NaN());
    std::fill(buf.begin() + static_cast<std::ptrdiff_t>(start + b / sizeof(float) + 1), buf.end(), 12345.0f);
  }
  void* data() { return buf.data() + start; }
  bool guard_intact() const {
    return std::all_of(buf.begin() + static_cast<std::ptrdiff_t>(start + bytes / sizeof(float) + 1), buf.end(),
                       [](float v) { return v == 12345.0f; });
  }
};

// What one tier computes for a shape: y (and y with bias when `bias`), and dx, dw, db added
// into buffers holding `*0` (dx, dw or db left out where `want` says so).
struct Results {
  std::vector<float> y, yb, dx, dw, db;
};
struct Inputs {
  std::vector<float> x, w, b, dy, dx0, dw0, db0;
};
struct Want {
  bool dx = true, dw = true, db = true;
  bool dx_overwrite = false;  // dx written over (accumulate_dx false) from a buffer of NaN
  bool bias_forward = true;  // also the forward with a bias (the models' convolutions have none)
};

Inputs inputs_for(const kernels::Conv2dShape& s, uint64_t seed) {
  Inputs in;
  in.x = uniform(static_cast<size_t>(s.n * s.c * s.h * s.w), seed);
  in.w = uniform(static_cast<size_t>(s.o * s.c * s.kh * s.kw), seed + 1);
  in.b = uniform(static_cast<size_t>(s.o), seed + 2);
  in.dy = uniform(static_cast<size_t>(s.n * s.o * s.ho * s.wo), seed + 3);
  in.dx0 = uniform(in.x.size(), seed + 4);
  in.dw0 = uniform(in.w.size(), seed + 5);
  in.db0 = uniform(in.b.size(), seed + 6);
  return in;
}

template <class Tier>
Results run_tier(const kernels::Conv2dShape& s, const Inputs& in, Want want, bool forward) {
  Results r;
  if (forward) {
    size_t bytes = 0;
    Tier::workspace_size(s, kernels::ConvPass::Forward, &bytes);
    Scratch scratch(bytes);
    r.y.assign(static_cast<size_t>(s.n * s.o * s.ho * s.wo), std::numeric_limits<float>::quiet_NaN());
    Tier::forward(s, in.x.data(), in.w.data(), nullptr, r.y.data(), scratch.data(), bytes);
    if (want.bias_forward) {
      r.yb.assign(r.y.size(), std::numeric_limits<float>::quiet_NaN());
      Tier::forward(s, in.x.data(), in.w.data(), in.b.data(), r.yb.data(), scratch.data(), bytes);
    }
    EXPECT_TRUE(scratch.guard_intact()) << Tier::name << " forward wrote past its scratch: " << text(s);
  }
  size_t bytes = 0;
  Tier::workspace_size(s, kernels::ConvPass::Backward, &bytes);
  Scratch scratch(bytes);
  r.dx = in.dx0, r.dw = in.dw0, r.db = in.db0;
  if (want.dx && want.dx_overwrite) r.dx.assign(in.dx0.size(), std::numeric_limits<float>::quiet_NaN());
  Tier::backward(s, in.x.data(), in.w.data(), in.dy.data(), want.dx ? r.dx.data() : nullptr,
                 want.dw ? r.dw.data() : nullptr, want.db ? r.db.data() : nullptr, !want.dx_overwrite,
                 scratch.data(), bytes);
  EXPECT_TRUE(scratch.guard_intact()) << Tier::name << " backward wrote past its scratch: " << text(s);
  return r;
}

struct Reference {
  static constexpr const char* name = "reference";
  static void workspace_size(const kernels::Conv2dShape& s, kernels::ConvPass p, size_t* b) {
    kernels::cpu::conv2d_workspace_size(s, p, b);
  }
  template <class... A>
  static void forward(A... a) { kernels::cpu::conv2d_forward(a...); }
  template <class... A>
  static void backward(A... a) { kernels::cpu::conv2d_backward(a...); }
};
struct Fast {
  static constexpr const char* name = "oneDNN";
  static void workspace_size(const kernels::Conv2dShape& s, kernels::ConvPass p, size_t* b) {
    kernels::onednn::conv2d_workspace_size(s, p, b);
  }
  template <class... A>
  static void forward(A... a) { kernels::onednn::conv2d_forward(a...); }
  template <class... A>
  static void backward(A... a) { kernels::onednn::conv2d_backward(a...); }
};

// Sets the fast tier's routing for a scope.
struct RoutingScope {
  kernels::onednn::ConvRouting saved = kernels::onednn::conv_routing();
  explicit RoutingScope(kernels::onednn::ConvRouting r) { kernels::onednn::set_conv_routing(r); }
  ~RoutingScope() { kernels::onednn::set_conv_routing(saved); }
};

// Whether the fast tier's plan for `s` runs Winograd (under the current routing).
bool runs_winograd(const kernels::Conv2dShape& s) {
  return kernels::onednn::conv2d_implementations(s).find("wino") != std::string::npos;
}

// oneDNN 2.6 has its f32 Winograd for AVX-512 only: on other CPUs every plan runs direct, and
// the Winograd tests skip with this reason instead of failing. Empty where Winograd runs.
std::string why_no_winograd() {
  RoutingScope winograd(kernels::onednn::ConvRouting::AllWinograd);
  kernels::Conv2dShape s;
  s.n = 2, s.c = s.o = 16, s.h = s.w = s.ho = s.wo = 8, s.kh = s.kw = 3, s.stride = 1, s.pad = 1;
  if (runs_winograd(s)) return "";
  return "oneDNN offers no Winograd convolution on this CPU (" + kernels::onednn::runtime_description() +
         "): every plan runs direct";
}

// Compares the tiers on one shape; returns the worst error / tolerance ratio.
double compare(const kernels::Conv2dShape& s, uint64_t seed, Want want = {}, bool forward = true,
               kernels::onednn::ConvRouting routing = kernels::onednn::ConvRouting::AllOneDnn) {
  SCOPED_TRACE(text(s));
  RoutingScope route(routing);
  const double scale = runs_winograd(s) ? kWinogradScale : 1.0;
  const Inputs in = inputs_for(s, seed);
  const Results ref = run_tier<Reference>(s, in, want, forward);
  const Results fast = run_tier<Fast>(s, in, want, forward);
  double worst = 0;
  auto check = [&](const char* what, const std::vector<float>& f, const std::vector<float>& r,
                   const std::vector<float>* base, double terms) {
    const double err = relative_error(f, r, base), tol = scale * sum_tolerance(terms);
    EXPECT_LE(err, tol) << what << ": relative error " << err << " over " << terms << " terms";
    worst = std::max(worst, err / tol);
  };
  const double taps = static_cast<double>(s.kh * s.kw), pixels = static_cast<double>(s.n * s.ho * s.wo);
  if (forward) {
    check("y", fast.y, ref.y, nullptr, static_cast<double>(s.c) * taps);
    if (want.bias_forward) check("y with bias", fast.yb, ref.yb, nullptr, static_cast<double>(s.c) * taps + 1);
  }
  if (want.dx)
    check(want.dx_overwrite ? "dx written" : "dx", fast.dx, ref.dx, want.dx_overwrite ? nullptr : &in.dx0,
          static_cast<double>(s.o) * taps);
  else EXPECT_EQ(fast.dx, in.dx0) << "dx was not asked for but changed";
  if (want.dw) check("dw", fast.dw, ref.dw, &in.dw0, pixels);
  else EXPECT_EQ(fast.dw, in.dw0) << "dw was not asked for but changed";
  if (want.db) check("db", fast.db, ref.db, &in.db0, pixels);
  else EXPECT_EQ(fast.db, in.db0) << "db was not asked for but changed";
  return worst;
}

// The distinct convolution shapes of `spec` at batch 2 and `size` x `size` inputs.
std::vector<kernels::Conv2dShape> conv_shapes(const ModelSpec& spec, int size) {
  CpuKernelsScope fast(CpuKernels::Fast);
  RoutingScope all(kernels::onednn::ConvRouting::AllOneDnn);  // every shape gets a plan
  kernels::onednn::clear_conv2d_plans();
  std::unique_ptr<Model> m = make_model(spec, Device::CPU);
  Workspace ws(Device::CPU);
  Graph g(ws);
  NoGradScope no_grad(g);
  const Tensor x = ws.alloc(Shape{2, spec.in_channels, size, size});
  fill_value(x, 0.5f);
  m->forward(g, g.input(x, "images"), /*train=*/false);
  std::vector<kernels::Conv2dShape> shapes = kernels::onednn::conv2d_plan_shapes();
  kernels::onednn::clear_conv2d_plans();
  return shapes;
}

ModelSpec spec_of(const std::string& arch, const std::string& stem, int width, int in_channels) {
  ModelSpec s;
  s.arch = arch;
  s.stem = stem;
  s.width = width;
  s.in_channels = in_channels;
  return s;
}

// Every shape of the model: forward, and the three gradients accumulated into non-zero buffers,
// dx written over instead on every other shape (the bias paths on the first shape only: the
// models' convolutions have no bias, and the odd-shape test below covers them).
// Under AllWinograd every 3x3 stride-1 shape that oneDNN takes runs Winograd (at least
// `min_winograd` of the model's shapes), the others direct, each against its own tolerance.
// Under Measured the shapes within the kernel's reach run as dense GEMMs (at least `min_dense`).
void compare_model(const ModelSpec& spec, int size, size_t expected_shapes,
                   kernels::onednn::ConvRouting routing = kernels::onednn::ConvRouting::AllOneDnn,
                   size_t min_winograd = 0, size_t min_dense = 0) {
  const std::vector<kernels::Conv2dShape> shapes = conv_shapes(spec, size);
  EXPECT_EQ(shapes.size(), expected_shapes) << "the model's distinct convolution shapes";
  RoutingScope route(routing);
  double worst = 0, worst_winograd = 0;
  size_t winograd = 0, dense = 0;
  uint64_t seed = 100;
  Want want;
  for (const kernels::Conv2dShape& s : shapes) {
    const bool wino = runs_winograd(s);
    const double ratio = compare(s, seed += 10, want, /*forward=*/true, routing);
    double& worst_of_kind = wino ? worst_winograd : worst;
    worst_of_kind = std::max(worst_of_kind, ratio);
    winograd += wino;
    dense += kernels::onednn::conv2d_runs_dense(s);
    want.bias_forward = false;
    want.dx_overwrite = !want.dx_overwrite;
  }
  EXPECT_GE(winograd, min_winograd) << "shapes that ran Winograd";
  EXPECT_GE(dense, min_dense) << "shapes that ran as dense GEMMs";
  std::printf("%s %s stem, width %d, %d channels, %dx%d, batch 2, routing %s: %zu shapes, worst error %.3f of the "
              "tolerance; %zu on Winograd, worst %.3f of its tolerance; %zu as dense GEMMs\n",
              spec.arch.c_str(), spec.stem.c_str(), spec.width, spec.in_channels, size, size,
              kernels::onednn::conv_routing_name(routing), shapes.size(), worst, winograd, worst_winograd, dense);
}

// The programs' models at their input sizes: CIFAR-size inputs for the cifar stems, STL-10's 96
// and ImageNet's 224 for the imagenet stems, the demos' Fashion-MNIST 28.
TEST(ConvFast, ResNet18CifarStem) { compare_model(spec_of("resnet18", "cifar", 64, 3), 32, 11); }
TEST(ConvFast, ResNet18ImagenetStemStl10) { compare_model(spec_of("resnet18", "imagenet", 64, 3), 96, 11); }
TEST(ConvFast, ResNet50CifarStem) { compare_model(spec_of("resnet50", "cifar", 64, 3), 32, 23); }
TEST(ConvFast, ResNet50ImagenetStem) { compare_model(spec_of("resnet50", "imagenet", 64, 3), 224, 23); }
TEST(ConvFast, WideResNet28x2) { compare_model(spec_of("wrn-28-2", "cifar", 64, 3), 32, 10); }
TEST(ConvFast, ByolDemoResNet18) { compare_model(spec_of("resnet18", "imagenet", 16, 1), 28, 11); }
TEST(ConvFast, FixMatchDemoWideResNet10x2) { compare_model(spec_of("wrn-10-2", "cifar", 64, 1), 28, 10); }

// Winograd (oneDNN's F(4x4, 3x3)) on every 3x3 stride-1 shape it takes, whatever the measured
// table would choose: the models whose shapes the table sends to it. Skips (the test with it)
// where this CPU has no Winograd.
void compare_model_on_winograd(const ModelSpec& spec, int size, size_t expected_shapes, size_t min_winograd) {
  if (const std::string why = why_no_winograd(); !why.empty()) GTEST_SKIP() << why;
  compare_model(spec, size, expected_shapes, kernels::onednn::ConvRouting::AllWinograd, min_winograd);
}
TEST(ConvFast, WinogradResNet18CifarStem) { compare_model_on_winograd(spec_of("resnet18", "cifar", 64, 3), 32, 11, 4); }
TEST(ConvFast, WinogradResNet50CifarStem) { compare_model_on_winograd(spec_of("resnet50", "cifar", 64, 3), 32, 23, 4); }
TEST(ConvFast, WinogradWideResNet28x2) { compare_model_on_winograd(spec_of("wrn-28-2", "cifar", 64, 3), 32, 10, 3); }
TEST(ConvFast, WinogradFixMatchDemoWideResNet10x2) {
  compare_model_on_winograd(spec_of("wrn-10-2", "cifar", 64, 1), 28, 10, 3);
}
TEST(ConvFast, WinogradByolDemoResNet18) {
  compare_model_on_winograd(spec_of("resnet18", "imagenet", 16, 1), 28, 11, 4);
}

// The measured routing on the BYOL demo's model: its 2x2 and 1x1 layers (layer3's 3x3s, layer4's
// stride-2 3x3 from 2x2 to 1x1 and its 3x3s on 1x1) run as dense GEMMs, the rest direct.
TEST(ConvFast, DenseGemmByolDemoResNet18) {
  compare_model(spec_of("resnet18", "imagenet", 16, 1), 28, 11, kernels::onednn::ConvRouting::Measured, 0, 3);
}

// Shapes within the kernel's reach that the models do not have (a bias, a non-square map, a 2x2
// kernel without padding, a 1x1 kernel on a 1x1 map, a 5x5 kernel on 3x3, odd channel counts),
// each gradient alone and together, dx added and written; and shapes just outside the reach
// stay off it.
TEST(ConvFast, DenseGemmShapes) {
  RoutingScope measured(kernels::onednn::ConvRouting::Measured);
  const std::vector<kernels::Conv2dShape> dense = {
      shape_of(3, 5, 1, 2, 7, 3, 3, 1, 1), shape_of(4, 9, 1, 1, 6, 1, 1, 1, 0), shape_of(2, 3, 3, 3, 4, 5, 5, 1, 2),
      shape_of(5, 6, 2, 2, 10, 3, 3, 2, 1), shape_of(2, 4, 2, 2, 3, 2, 2, 1, 0)};
  uint64_t seed = 13000;
  for (const kernels::Conv2dShape& s : dense) {
    EXPECT_TRUE(kernels::onednn::conv2d_runs_dense(s)) << text(s);
    EXPECT_EQ(kernels::onednn::conv2d_implementations(s), "fwd dense:sgemm, data dense:sgemm, weights dense:sgemm");
    for (int mask = 1; mask < 16; ++mask) {
      Want want;
      want.dx = mask & 1, want.dw = mask & 2, want.db = mask & 4, want.dx_overwrite = mask & 8;
      want.bias_forward = true;
      SCOPED_TRACE(cat("dx ", want.dx, " dw ", want.dw, " db ", want.db, " dx written ", want.dx_overwrite));
      compare(s, seed += 10, want, /*forward=*/mask == 7, kernels::onednn::ConvRouting::Measured);
    }
  }
  // A 3x3 map under a 3x3 kernel (the corner outputs miss the far corner), a stride-2 3x3 from
  // 4x4 to 2x2, a 1x1 stride-2 downsample from 2x2: not every window covers the map.
  for (const kernels::Conv2dShape& s : {shape_of(2, 4, 3, 3, 4, 3, 3, 1, 1), shape_of(2, 4, 4, 4, 4, 3, 3, 2, 1),
                                        shape_of(2, 4, 2, 2, 4, 1, 1, 2, 0)})
    EXPECT_FALSE(kernels::onednn::conv2d_runs_dense(s)) << text(s);
  RoutingScope all(kernels::onednn::ConvRouting::AllOneDnn);
  EXPECT_FALSE(kernels::onednn::conv2d_runs_dense(dense[0])) << "AllOneDnn runs oneDNN's direct kernels everywhere";
}

// Each gradient alone and in pairs: the kernel's paths for a missing dx, dw or db (the bias
// gradient without the filter gradient is computed apart from oneDNN).
TEST(ConvFast, EachGradientAloneAndInPairs) {
  kernels::Conv2dShape s;
  s.n = 2, s.c = 16, s.h = s.w = 9, s.o = 24, s.kh = s.kw = 3, s.stride = 2, s.pad = 1;
  s.ho = s.wo = 5;
  uint64_t seed = 7000;
  for (int mask = 1; mask < 16; ++mask) {
    Want want;
    want.dx = mask & 1, want.dw = mask & 2, want.db = mask & 4, want.dx_overwrite = mask & 8;
    SCOPED_TRACE(cat("dx ", want.dx, " dw ", want.dw, " db ", want.db, " dx written ", want.dx_overwrite));
    compare(s, seed += 10, want, /*forward=*/false);
  }
}

// The three layouts (kernels/onednn/onednn.h, Layout). Under Plain and Nhwc some operands need
// no reorder, so a gradient added into the caller's buffer goes through the output stage's
// accumulate path rather than the format conversion; each layout must still add, and write
// over when asked.
TEST(ConvFast, EveryLayoutAddsAndWritesGradients) {
  struct LayoutScope {
    kernels::onednn::Layout saved = kernels::onednn::layout();
    explicit LayoutScope(kernels::onednn::Layout l) { kernels::onednn::set_layout(l); }
    ~LayoutScope() { kernels::onednn::set_layout(saved); }
  };
  const kernels::Conv2dShape s = shape_of(2, 16, 8, 8, 16, 3, 3, 1, 1);
  for (kernels::onednn::Layout l :
       {kernels::onednn::Layout::Plain, kernels::onednn::Layout::Nhwc, kernels::onednn::Layout::Blocked}) {
    LayoutScope layout(l);
    SCOPED_TRACE(kernels::onednn::layout_name(l));
    uint64_t seed = 15000;
    for (bool overwrite : {false, true}) {
      Want want;
      want.dx_overwrite = overwrite;
      compare(s, seed += 10, want, /*forward=*/!overwrite);
    }
  }
}

// The measured table (kernels/onednn/conv.cpp, conv2d_on_onednn and conv2d_wants_winograd):
// everything on oneDNN but the data gradient of a 1x1 convolution with an output of 8x8 or more,
// and its other two passes too when it has 32 input channels or fewer;
// Winograd ("W") for 3x3 stride-1 convolutions of 16+ input channels with an output of at least
// 8x8, or at least 4x4 with 64+ input channels.
TEST(ConvFast, MeasuredRoutingTable) {
  using kernels::onednn::ConvPart;
  auto shape = [](int64_t c, int64_t h, int64_t o, int64_t k, int64_t stride) {
    return shape_of(64, c, h, h, o, k, k, stride, k / 2);
  };
  auto route = [](const kernels::Conv2dShape& s) {
    std::string r;
    for (ConvPart p : {ConvPart::Forward, ConvPart::Data, ConvPart::Weights})
      r += kernels::onednn::conv2d_runs_dense(s)       ? "G"
           : !kernels::onednn::conv2d_on_onednn(s, p)    ? "r"
           : kernels::onednn::conv2d_wants_winograd(s)   ? "W"
                                                         : "D";
    return r;
  };
  {
    RoutingScope measured(kernels::onednn::ConvRouting::Measured);
    EXPECT_EQ(route(shape(3, 32, 64, 3, 1)), "DDD");      // CIFAR stem: 3 channels
    EXPECT_EQ(route(shape(64, 32, 64, 3, 1)), "WWW");     // layer1 3x3
    EXPECT_EQ(route(shape(256, 8, 256, 3, 1)), "WWW");    // layer3 3x3, 8x8 output
    EXPECT_EQ(route(shape(512, 4, 512, 3, 1)), "WWW");    // layer4 3x3, 4x4 output, 512 channels
    EXPECT_EQ(route(shape(256, 8, 512, 3, 2)), "DDD");    // layer4.0, stride 2
    EXPECT_EQ(route(shape(64, 32, 128, 1, 2)), "DrD");    // downsample 1x1, 16x16 output
    EXPECT_EQ(route(shape(256, 8, 512, 1, 2)), "DDD");    // downsample 1x1, 4x4 output
    EXPECT_EQ(route(shape(16, 28, 32, 1, 1)), "rrr");     // WRN block1 shortcut: 16 channels, 28x28
    EXPECT_EQ(route(shape(32, 28, 64, 1, 2)), "rrr");     // WRN block2 shortcut: 32 channels, 14x14
    EXPECT_EQ(route(shape(64, 14, 128, 1, 2)), "DDD");    // WRN block3 shortcut: 64 channels, 7x7
    EXPECT_EQ(route(shape(32, 8, 64, 1, 2)), "DDD");      // 32 channels, 4x4 output (the demo's)
    EXPECT_EQ(route(shape(3, 224, 64, 7, 2)), "DDD");     // ImageNet stem 7x7
    EXPECT_EQ(route(shape(16, 28, 32, 3, 1)), "WWW");     // WRN block1 on Fashion-MNIST, 28x28
    EXPECT_EQ(route(shape(128, 7, 128, 3, 1)), "WWW");    // WRN block3, 7x7 output, 128 channels
    EXPECT_EQ(route(shape(16, 7, 16, 3, 1)), "DDD");      // the demo's layer1: 7x7, 16 channels
    EXPECT_EQ(route(shape(32, 4, 32, 3, 1)), "DDD");      // the demo's layer2: 4x4, 32 channels
    EXPECT_EQ(route(shape(64, 4, 64, 3, 2)), "DDD");      // the demo's layer3.0: 4x4 to 2x2
    EXPECT_EQ(route(shape(64, 2, 64, 3, 1)), "GGG");      // the demo's layer3: 2x2, dense GEMM
    EXPECT_EQ(route(shape(64, 2, 128, 3, 2)), "GGG");     // the demo's layer4.0: 2x2 to 1x1
    EXPECT_EQ(route(shape(128, 1, 128, 3, 1)), "GGG");    // the demo's layer4: 1x1
  }
  {
    RoutingScope all(kernels::onednn::ConvRouting::AllOneDnn);
    EXPECT_EQ(route(shape(64, 32, 128, 1, 2)), "DDD");
    EXPECT_EQ(route(shape(512, 4, 512, 3, 1)), "DDD");
  }
  RoutingScope winograd(kernels::onednn::ConvRouting::AllWinograd);
  EXPECT_EQ(route(shape(64, 32, 128, 1, 2)), "DDD");
  EXPECT_EQ(route(shape(128, 1, 128, 3, 1)), "WWW");
  EXPECT_EQ(route(shape(3, 32, 64, 3, 1)), "WWW");
  EXPECT_EQ(route(shape(64, 2, 128, 3, 2)), "DDD");
}

// The measured routes mix the tiers inside one backward (the data gradient of a 1x1 convolution of
// more than 32 channels on the reference with its filter gradient on oneDNN): each gradient alone,
// together, with the bias, into non-zero buffers, and one scratch sized for both.
TEST(ConvFast, MeasuredRoutingMixesTheTiersCorrectly) {
  kernels::Conv2dShape large;  // 3x3, 8x8 output: both gradients on oneDNN
  large.n = 4, large.c = 32, large.h = large.w = 8, large.o = 48, large.kh = large.kw = 3, large.stride = 1;
  large.pad = 1, large.ho = large.wo = 8;
  kernels::Conv2dShape pointwise = large;  // 1x1, 40 channels, 8x8 output: data on the reference, weights on oneDNN
  pointwise.c = 40, pointwise.kh = pointwise.kw = 1, pointwise.pad = 0;
  kernels::Conv2dShape small_pointwise = pointwise;  // 1x1, 4x4 output: both on oneDNN
  small_pointwise.h = small_pointwise.w = small_pointwise.ho = small_pointwise.wo = 4;
  kernels::Conv2dShape narrow_pointwise = pointwise;  // 1x1, 32 channels, 8x8 output: every pass on the reference
  narrow_pointwise.c = 32;
  {
    RoutingScope measured(kernels::onednn::ConvRouting::Measured);
    using kernels::onednn::ConvPart, kernels::onednn::conv2d_on_onednn;
    ASSERT_TRUE(!conv2d_on_onednn(pointwise, ConvPart::Data) && conv2d_on_onednn(pointwise, ConvPart::Weights))
        << "the table no longer mixes the tiers in this shape's backward: pick one it does";
  }
  uint64_t seed = 11000;
  for (const kernels::Conv2dShape& s : {large, pointwise, small_pointwise, narrow_pointwise})
    for (int mask = 1; mask < 16; ++mask) {
      Want want;
      want.dx = mask & 1, want.dw = mask & 2, want.db = mask & 4, want.dx_overwrite = mask & 8;
      SCOPED_TRACE(cat("dx ", want.dx, " dw ", want.dw, " db ", want.db, " dx written ", want.dx_overwrite));
      compare(s, seed += 10, want, /*forward=*/mask == 7, kernels::onednn::ConvRouting::Measured);
    }
}

// Under the measured routing, a Winograd pass whose call (oneDNN's scratchpad plus the blocked
// copies of its operands) would pass the cap over the whole batch runs over slices of it
// (kernels/onednn/onednn.h, winograd_scratchpad_cap). oneDNN sizes the scratchpad by the CPU's
// caches, so which passes slice is the machine's: on a 2-core Xeon with 2 MiB of L2 per core,
// CIFAR layer2 at batch 64 fits whole and layer3's forward and data gradient run in 32s; layer1
// runs in 32s everywhere (its copies of x and y alone are 32 MiB at batch 64, a scratchpad-only
// rule would run it whole). So the expected plan is the rule applied to the sizes this machine's
// oneDNN asks for, under the 32 MiB cap and under one lowered to what 16 samples of layer3's
// forward need; the lowered round then compares sliced passes, alone and beside whole ones, with
// the reference.
TEST(ConvFast, MeasuredRoutingSlicesWinogradBatches) {
  if (const std::string why = why_no_winograd(); !why.empty()) GTEST_SKIP() << why;
  RoutingScope measured(kernels::onednn::ConvRouting::Measured);
  struct CapScope {
    size_t saved = kernels::onednn::winograd_scratchpad_cap();
    ~CapScope() { kernels::onednn::set_winograd_scratchpad_cap(saved); }
  } restore_cap;
  kernels::Conv2dShape layer2;
  layer2.n = 64, layer2.c = layer2.o = 128, layer2.h = layer2.w = layer2.ho = layer2.wo = 16;
  layer2.kh = layer2.kw = 3, layer2.stride = 1, layer2.pad = 1;
  kernels::Conv2dShape layer3 = layer2, layer1 = layer2;
  layer3.c = layer3.o = 256, layer3.h = layer3.w = layer3.ho = layer3.wo = 8;
  layer1.c = layer1.o = 64, layer1.h = layer1.w = layer1.ho = layer1.wo = 32;
  const kernels::onednn::ConvPart parts[] = {kernels::onednn::ConvPart::Forward, kernels::onednn::ConvPart::Data,
                                             kernels::onednn::ConvPart::Weights};
  const char* const part_names[] = {"fwd", "data", "weights"};
  auto slice_of = [](kernels::Conv2dShape s, int64_t n) {
    s.n = n;
    return s;
  };
  // The rule: the largest of n, n / 2, ... (at least 8) whose call fits, else direct.
  auto expected_plan = [&](const kernels::Conv2dShape& s, size_t cap) {
    std::string plan;
    for (int p = 0; p < 3; ++p) {
      std::string runs = "jit:";
      for (int64_t n = s.n; n >= 8; n /= 2) {
        const size_t bytes = kernels::onednn::conv2d_winograd_call_scratch(slice_of(s, n), parts[p]);
        if (bytes == 0) break;
        if (bytes <= cap) {
          runs = "jit_wino_4x3:" + (n < s.n ? " (" + std::to_string(n) + " samples per call)" : std::string());
          break;
        }
      }
      plan += std::string(p > 0 ? ", " : "") + part_names[p] + " " + runs;
    }
    return plan;
  };
  // conv2d_implementations without the ISA names: "fwd jit_wino_4x3:avx512_core (16 samples
  // per call), ..." -> "fwd jit_wino_4x3: (16 samples per call), ...".
  auto plan_of = [](const kernels::Conv2dShape& s) {
    std::string plan = kernels::onednn::conv2d_implementations(s);
    for (size_t at = plan.find(':'); at != std::string::npos; at = plan.find(':', at + 1)) {
      const size_t end = plan.find_first_of(" ,", at);
      plan.erase(at + 1, (end == std::string::npos ? plan.size() : end) - at - 1);
    }
    return plan;
  };
  // The lowered cap: layer3's forward over 16 samples. Its tiles scale with the batch (34.6 MB
  // over 64 samples, 25.2 over 32, 20.4 over 16 on the Xeon), so that pass then runs in 16s.
  auto winograd_call = [&](const kernels::Conv2dShape& s, int part) {
    return kernels::onednn::conv2d_winograd_call_scratch(s, parts[part]);
  };
  const size_t lowered = winograd_call(slice_of(layer3, 16), 0);
  ASSERT_GT(lowered, 0u) << "oneDNN offers no Winograd forward for 16 samples of layer3";
  ASSERT_GT(winograd_call(slice_of(layer3, 32), 0), lowered)
      << "oneDNN's scratchpad for layer3's forward does not grow from 16 to 32 samples on this CPU: no cap "
         "makes that pass run on slices";
  // The copies count: layer1's whole-batch call passes the cap by them, its scratchpad alone would not.
  ASSERT_GT(winograd_call(layer1, 0), kernels::onednn::winograd_scratchpad_cap());
  for (size_t cap : {kernels::onednn::winograd_scratchpad_cap(), lowered}) {
    kernels::onednn::set_winograd_scratchpad_cap(cap);
    SCOPED_TRACE(cat("cap ", cap, " bytes"));
    EXPECT_EQ(plan_of(layer1), expected_plan(layer1, cap));
    EXPECT_EQ(plan_of(layer2), expected_plan(layer2, cap));
    EXPECT_EQ(plan_of(layer3), expected_plan(layer3, cap));
  }
  EXPECT_NE(plan_of(layer3).find("fwd jit_wino_4x3: (16 samples per call)"), std::string::npos) << plan_of(layer3);
  uint64_t seed = 12000;
  for (const kernels::Conv2dShape& s : {layer2, layer3})
    for (int mask : {7, 1, 2, 9, 11}) {
      Want want;
      want.dx = mask & 1, want.dw = mask & 2, want.db = mask & 4, want.dx_overwrite = mask & 8;
      want.bias_forward = mask == 7;
      SCOPED_TRACE(cat("dx ", want.dx, " dw ", want.dw, " db ", want.db, " dx written ", want.dx_overwrite));
      compare(s, seed += 10, want, /*forward=*/mask == 7 || mask == 9, kernels::onednn::ConvRouting::Measured);
    }
}

TEST(ConvFast, RoutingEnvironmentValueIsChecked) {
  // conv_routing() reads TESSERA_CONV_ROUTING once; the setter is what tools use after that, and
  // a bad value is reported by the first read. Checked in a child process: the bench program.
  const std::vector<std::string> step = {"train-step", "--arch", "resnet18", "--stem", "cifar", "--width", "4",
                                         "--size", "8", "--batch", "2", "--steps", "1", "--warmup", "0",
                                         "--device", "cpu", "--cpu-kernels", "fast"};
  const char* saved = std::getenv("TESSERA_CONV_ROUTING");
  const std::string saved_value = saved ? saved : "";
  ::setenv("TESSERA_CONV_ROUTING", "fastest", 1);
  const program_runs::Result bad = program_runs::run("bench", step);
  ::setenv("TESSERA_CONV_ROUTING", "onednn", 1);
  const program_runs::Result all = program_runs::run("bench", step);
  if (saved) ::setenv("TESSERA_CONV_ROUTING", saved_value.c_str(), 1);
  else ::unsetenv("TESSERA_CONV_ROUTING");
  EXPECT_NE(bad.status, 0) << bad.output;
  EXPECT_NE(bad.output.find("TESSERA_CONV_ROUTING: expected measured, onednn or winograd, found 'fastest'"), std::string::npos)
      << bad.output;
  ASSERT_EQ(all.status, 0) << all.output;
  EXPECT_NE(all.output.find("routing onednn"), std::string::npos) << all.output;
}

// Odd shapes the models do not have: non-square kernel, padding larger than needed, an output
// of one pixel, a stride that skips input columns.
TEST(ConvFast, OddShapes) {
  uint64_t seed = 9000;
  for (const kernels::Conv2dShape& s : {shape_of(2, 3, 7, 5, 5, 3, 1, 1, 0), shape_of(1, 5, 4, 4, 3, 3, 3, 1, 2),
                                        shape_of(2, 8, 3, 3, 16, 3, 3, 1, 0), shape_of(2, 4, 11, 11, 6, 2, 2, 3, 0),
                                        shape_of(3, 17, 6, 6, 9, 5, 5, 2, 2)})
    compare(s, seed += 10);
}

// One plan per shape and thread count: a second call finds it, another OpenMP team size makes
// its own (oneDNN sizes per-thread scratch when a primitive is made).
TEST(ConvFast, PlansAreCachedPerShapeAndThreadCount) {
  kernels::onednn::clear_conv2d_plans();
  kernels::Conv2dShape s;
  s.n = 2, s.c = 8, s.h = s.w = 8, s.o = 8, s.kh = s.kw = 3, s.stride = 1, s.pad = 1, s.ho = s.wo = 8;
  size_t bytes = 0;
  kernels::onednn::conv2d_workspace_size(s, kernels::ConvPass::Forward, &bytes);
  kernels::onednn::conv2d_workspace_size(s, kernels::ConvPass::Backward, &bytes);
  kernels::onednn::conv2d_workspace_size(s, kernels::ConvPass::Forward, &bytes);
  EXPECT_EQ(kernels::onednn::conv2d_plan_count(), 1u);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(threads == 1 ? 2 : 1);
  compare(s, 8000);  // correct on the other team size too
  omp_set_num_threads(threads);
  EXPECT_EQ(kernels::onednn::conv2d_plan_count(), 2u);
  EXPECT_EQ(kernels::onednn::conv2d_plan_shapes().size(), 1u);
  kernels::onednn::clear_conv2d_plans();
}

// Debian's libdnnl must run on OpenMP, or its threads would compete with the engine's.
TEST(ConvFast, RunsOnTheEnginesOpenMpPool) {
  std::printf("%s\n", kernels::onednn::runtime_description().c_str());
  EXPECT_TRUE(kernels::onednn::runtime_is_openmp()) << kernels::onednn::runtime_description();
}

#else  // no oneDNN in this build

TEST(ConvFast, NotBuilt) { GTEST_SKIP() << "built without oneDNN (ONEDNN=0): no fast tier to compare"; }

#endif

}  // namespace
}  // namespace tessera
