// Workspace (per-step allocator: blocks, releases, scratch), the graph's releases and in-place
// ops, and the arena (parameter tables, canaries) behaviour.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "models/model.h"

namespace tessera {
namespace {

// ---- workspace -----------------------------------------------------------------------

TEST(Workspace, ResetHandsOutTheSameAddresses) {
  Workspace ws(Device::CPU, 1 << 16);
  void* a = ws.alloc(Shape{100}).ptr;
  void* b = ws.alloc(Shape{3, 7}).ptr;
  EXPECT_NE(a, b);
  // Offsets are rounded to kAlignBytes; the block itself is 64-byte aligned on the CPU
  // (Buffer's aligned_alloc) and 256-byte aligned by cudaMalloc.
  const uintptr_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  EXPECT_EQ((pb - pa) % Workspace::kAlignBytes, 0u);
  EXPECT_EQ(pb % 64, 0u);
  ws.reset();
  EXPECT_EQ(ws.used(), 0u);
  EXPECT_EQ(ws.alloc(Shape{100}).ptr, a);
  EXPECT_EQ(ws.alloc(Shape{3, 7}).ptr, b);
  EXPECT_EQ(ws.spills(), 0);
}

TEST(Workspace, HighWaterMarkIsTheLargestStep) {
  Workspace ws(Device::CPU, 1 << 16);
  ws.alloc(Shape{1000});  // 4000 bytes -> 4096 after alignment
  ws.alloc(Shape{10});    // 40 -> 256
  EXPECT_EQ(ws.used(), 4096u + 256u);
  EXPECT_EQ(ws.high_water(), 4096u + 256u);
  ws.reset();
  ws.alloc(Shape{10});
  EXPECT_EQ(ws.used(), 256u);
  EXPECT_EQ(ws.high_water(), 4096u + 256u);  // a smaller step leaves the mark where it was
}

TEST(Workspace, SpillsThenGrowsOnReset) {
  Workspace ws(Device::CPU, 1024);
  float* inside = ws.alloc(Shape{128}).f32();   // 512 bytes: fits
  float* spilled = ws.alloc(Shape{1024}).f32(); // 4096 bytes: does not fit
  EXPECT_EQ(ws.spills(), 1);
  spilled[1023] = 1.0f;  // the spill block is real, usable memory
  inside[127] = 2.0f;
  EXPECT_EQ(ws.capacity(), 1024u);  // never grows inside a step
  ws.reset();
  EXPECT_GE(ws.capacity(), ws.high_water());
  EXPECT_EQ(ws.spills(), 0);
  ws.alloc(Shape{128});
  ws.alloc(Shape{1024});
  EXPECT_EQ(ws.spills(), 0);
}

// Scratch is one region handed to every op in turn: two requests in a step share an address,
// a larger one spills for this step only, and reset() grows the region to the largest request.
TEST(Workspace, ScratchIsOneRegionReusedAndGrownBetweenSteps) {
  Workspace ws(Device::CPU);
  void* first = ws.scratch(1000);  // no region yet: a spill
  EXPECT_EQ(ws.spills(), 1);
  ws.reset();
  EXPECT_EQ(ws.scratch_capacity(), 1024u);  // the largest request, aligned
  void* a = ws.scratch(1000);
  void* b = ws.scratch(10);
  EXPECT_EQ(a, b);  // the same region for every op
  EXPECT_EQ(ws.spills(), 0);
  void* big = ws.scratch(5000);  // larger than the region: spilled, usable now
  EXPECT_NE(big, a);
  static_cast<char*>(big)[4999] = 1;
  EXPECT_EQ(ws.spills(), 1);
  EXPECT_EQ(ws.scratch_capacity(), 1024u);  // never grows inside a step
  ws.reset();
  EXPECT_EQ(ws.scratch_capacity(), 5120u);
  EXPECT_EQ(ws.scratch(5000), ws.scratch(4));
  EXPECT_EQ(ws.spills(), 0);
  EXPECT_EQ(ws.high_water(), 0u);  // scratch is not a step allocation
  EXPECT_EQ(ws.scratch_high_water(), 5120u);
  EXPECT_EQ(ws.peak_bytes(), 5120u);
  (void)first;
}

// The convolution's scratch (im2col columns on the CPU, the cuDNN workspace on the GPU) is dead
// when the kernel returns and must not stay in the step's bump allocator until the step ends.
// The shape is chosen so that the columns (C KH KW x HO WO per image) are far larger than every
// tensor of the step: taken from the bump allocator, the forward's and the backward's columns
// alone would exceed the scratch high-water twice over.
TEST(Workspace, ConvolutionScratchDoesNotStayInTheStep) {
  CpuKernelsScope reference(CpuKernels::Reference);  // the im2col columns are the reference's
  Workspace ws(Device::CPU);
  Graph g(ws);
  for (int step = 0; step < 2; ++step) {
    ws.reset();
    g.clear();
    Tensor xv = ws.alloc(Shape{2, 64, 16, 16}), wv = ws.alloc(Shape{1, 64, 3, 3});
    fill_value(xv, 0.5f);
    fill_value(wv, 0.25f);
    Var* x = g.input(xv, "x");
    Var* w = g.param(wv, g.workspace().alloc(wv.shape), "w");
    Var* y = ops::conv2d(g, x, w, nullptr, 1, 1);
    g.backward(ops::mean(g, y));
  }
  const size_t columns = size_t{64} * 3 * 3 * 16 * 16 * sizeof(float);  // one image's columns
  EXPECT_GE(ws.scratch_high_water(), columns);
  EXPECT_LT(ws.high_water(), ws.scratch_high_water())
      << "the step's own allocations include convolution scratch";
  EXPECT_EQ(ws.spills(), 0);  // the second step reuses the region
}

// A training-like step (MLP forward and backward) run three times on one workspace that
// starts empty: the first step spills, later ones allocate nothing and reuse the addresses.
TEST(Workspace, SecondIdenticalStepHasNoSpills) {
  OwnedTensor x(Device::CPU, Shape{8, 6}), w1(Device::CPU, Shape{16, 6}), w2(Device::CPU, Shape{4, 16}),
      dw1(Device::CPU, Shape{16, 6}), dw2(Device::CPU, Shape{4, 16}), labels(Device::CPU, Shape{8}, DType::I32);
  for (const Tensor& t : {x.t, w1.t, w2.t}) fill_value(t, 0.1f);
  from_host(labels.t, std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3});
  Workspace ws(Device::CPU);
  Graph g(ws);
  auto step = [&] {
    g.clear();
    ws.reset();
    fill_zero(dw1.t);
    fill_zero(dw2.t);
    Var* h = ops::relu(g, ops::linear(g, g.input(x.t), g.param(w1.t, dw1.t), nullptr));
    Var* loss = ops::cross_entropy(g, ops::linear(g, h, g.param(w2.t, dw2.t), nullptr), labels.t);
    g.backward(loss);
    return loss->value.ptr;
  };
  step();
  EXPECT_GT(ws.spills(), 0);
  void* second = step();
  EXPECT_EQ(ws.spills(), 0);
  const size_t used = ws.used();
  EXPECT_EQ(step(), second);
  EXPECT_EQ(ws.spills(), 0);
  EXPECT_EQ(ws.used(), used);
}

// ---- blocks released during the step ---------------------------------------------------

TEST(Workspace, ReleasedBlockIsReusedAndTheHighWaterStays) {
  Workspace ws(Device::CPU, 1 << 16);
  void* a = ws.alloc_bytes(1000);  // 1024 after alignment
  void* b = ws.alloc_bytes(1000);
  ws.release(a);
  EXPECT_EQ(ws.used(), 1024u);
  EXPECT_EQ(ws.alloc_bytes(1000), a);  // the freed range, not a new one past b
  EXPECT_EQ(ws.high_water(), 2048u);
  ws.release(b);  // the top block: the top comes down
  EXPECT_EQ(ws.alloc_bytes(1024), b);
  EXPECT_EQ(ws.high_water(), 2048u);
  EXPECT_EQ(ws.spills(), 0);
}

TEST(Workspace, NeighboursMergeAndBestFitPicksTheSmallestRange) {
  Workspace ws(Device::CPU, 1 << 16);
  char* a = static_cast<char*>(ws.alloc_bytes(256));
  char* b = static_cast<char*>(ws.alloc_bytes(256));
  char* c = static_cast<char*>(ws.alloc_bytes(512));
  char* d = static_cast<char*>(ws.alloc_bytes(256));  // keeps c's range below the top
  ws.release(a);
  ws.release(b);                            // merges with a: one 512-byte range at a
  EXPECT_EQ(ws.alloc_bytes(512), a);        // fits only because a and b merged
  ws.release(c);                            // 512 free at c
  char* e = static_cast<char*>(ws.alloc_bytes(768));  // no free range holds it: from the top
  EXPECT_EQ(e, d + 256);
  EXPECT_EQ(ws.alloc_bytes(256), c);        // the only range that fits
  EXPECT_EQ(ws.high_water(), 256u * 2 + 512 + 256 + 768);
}

// The mirror image of the test above: a block released *before* the block after it merges
// forwards, and best fit takes the smaller of two ranges that both fit, not the first or largest.
TEST(Workspace, ReleasedRangesMergeForwardsAndBestFitSkipsLargerRanges) {
  Workspace ws(Device::CPU, 1 << 16);
  char* a = static_cast<char*>(ws.alloc_bytes(1024));
  ws.alloc_bytes(256);  // separates a's range from b's
  char* b = static_cast<char*>(ws.alloc_bytes(256));
  char* c = static_cast<char*>(ws.alloc_bytes(256));
  ws.alloc_bytes(256);  // keeps b and c below the top
  ws.release(c);
  ws.release(b);                        // merges with c, which is after it: 512 at b
  ws.release(a);                        // 1024 at a
  EXPECT_EQ(ws.alloc_bytes(512), b);    // both ranges fit; b's is the smaller
  EXPECT_EQ(ws.alloc_bytes(1024), a);
  EXPECT_EQ(ws.high_water(), 1024u + 4 * 256);
}

// Zero-byte requests still get a block of their own (a distinct, releasable pointer), and
// the size of a request follows its dtype.
TEST(Workspace, EmptyAndNarrowRequests) {
  Workspace ws(Device::CPU, 1 << 16);
  void* a = ws.alloc_bytes(0);
  void* b = ws.alloc(Shape{0}).ptr;
  EXPECT_NE(a, b);
  EXPECT_EQ(ws.used(), 2 * Workspace::kAlignBytes);
  ws.release(a);
  ws.release(b);
  EXPECT_EQ(ws.used(), 0u);
  ws.alloc(Shape{300}, DType::U8);  // 300 bytes -> 512
  EXPECT_EQ(ws.used(), 512u);
  ws.alloc(Shape{100}, DType::I32);  // 400 bytes -> 512
  EXPECT_EQ(ws.used(), 1024u);
}

// A step that fills the block exactly neither spills nor makes reset() regrow it; one that
// outgrows it gets a block with headroom above the high-water.
TEST(Workspace, ExactFitStaysAndGrowthLeavesHeadroom) {
  Workspace ws(Device::CPU, 1024);
  char* base = static_cast<char*>(ws.alloc_bytes(512));
  EXPECT_EQ(ws.alloc_bytes(512), base + 512);  // ends exactly at the capacity: inside the block
  EXPECT_EQ(ws.spills(), 0);
  ws.reset();
  EXPECT_EQ(ws.capacity(), 1024u);
  ws.alloc_bytes(1024);
  ws.alloc_bytes(1024);  // spills
  EXPECT_EQ(ws.spills(), 1);
  ws.reset();
  EXPECT_GT(ws.capacity(), ws.high_water()) << "no headroom: a slightly larger step would spill again";
}

// poison() covers the scratch region as well as the main block, with 0xFF bytes.
TEST(Workspace, PoisonFillsBlockAndScratchWithOnes) {
  Workspace ws(Device::CPU, 1024);
  ws.scratch(512);
  ws.reset();  // the scratch region now exists
  ASSERT_EQ(ws.scratch_capacity(), 512u);
  ws.poison();
  const unsigned char* main = static_cast<const unsigned char*>(ws.alloc_bytes(1024));
  const unsigned char* scratch = static_cast<const unsigned char*>(ws.scratch(512));
  for (size_t i = 0; i < 1024; ++i) ASSERT_EQ(main[i], 0xFF) << "main byte " << i;
  for (size_t i = 0; i < 512; ++i) ASSERT_EQ(scratch[i], 0xFF) << "scratch byte " << i;
}

TEST(Workspace, ReleasingWhatIsNotALiveBlockIsAnError) {
  Workspace ws(Device::CPU, 1 << 16);
  char* a = static_cast<char*>(ws.alloc_bytes(512));
  EXPECT_THROW(ws.release(a + 256), Error);  // inside a block, not a block
  ws.release(a);
  try {
    ws.release(a);
    ADD_FAILURE() << "a double release was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected a live block"), std::string::npos) << e.what();
  }
}

// Random requests and releases: live blocks never overlap (each is filled with its own tag and
// checked before it is released), and the high-water is the highest end of a block.
TEST(Workspace, LiveBlocksNeverOverlapUnderRandomUse) {
  for (size_t capacity : {size_t{0}, size_t{1} << 20}) {  // all spills / all inside the block
    Workspace ws(Device::CPU, capacity);
    for (int step = 0; step < 3; ++step) {
      ws.reset();
      kernels::PhiloxState rng(5, 77, 0);
      struct Live {
        uint32_t* p;
        size_t words;
        uint32_t tag;
      };
      std::vector<Live> live;
      for (uint32_t i = 0; i < 400; ++i) {
        if (!live.empty() && rng.uniform() < 0.45f) {
          const size_t k = static_cast<size_t>(rng.uniform() * static_cast<float>(live.size())) % live.size();
          for (size_t j = 0; j < live[k].words; ++j)
            ASSERT_EQ(live[k].p[j], live[k].tag) << "block " << live[k].tag << " was overwritten (step " << step << ")";
          ws.release(live[k].p);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
          continue;
        }
        const size_t bytes = 4 + static_cast<size_t>(rng.uniform() * 6000.0f) / 4 * 4;
        uint32_t* p = static_cast<uint32_t*>(ws.alloc_bytes(bytes));
        std::fill(p, p + bytes / 4, i);
        live.push_back({p, bytes / 4, i});
      }
      size_t live_bytes = 0;
      for (const Live& l : live) {
        for (size_t j = 0; j < l.words; ++j) ASSERT_EQ(l.p[j], l.tag) << "block " << l.tag << " was overwritten";
        live_bytes += (l.words * 4 + Workspace::kAlignBytes - 1) / Workspace::kAlignBytes * Workspace::kAlignBytes;
      }
      EXPECT_EQ(ws.used(), live_bytes);
      EXPECT_EQ(ws.live_blocks(), live.size());
      EXPECT_GE(ws.high_water(), live_bytes);
    }
    // The same requests every step: after the first, the block holds them all.
    EXPECT_EQ(ws.spills(), 0) << "capacity " << capacity;
  }
}

// Backward hands each intermediate back once nothing on the tape reads it: a chain of L ops on
// one tensor size needs the L forward values plus a few gradients, not L values and L gradients.
TEST(Workspace, BackwardReleasesIntermediatesAndGradientsAreReused) {
  const int64_t n = 1 << 16;  // 256 KiB per tensor
  const size_t tensor = size_t(n) * 4;
  const int layers = 8;
  OwnedTensor x(Device::CPU, Shape{n}), w(Device::CPU, Shape{n}), dw(Device::CPU, Shape{n});
  fill_value(x.t, 0.5f);
  fill_value(w.t, 1.5f);
  fill_zero(dw.t);
  Workspace ws(Device::CPU);
  Graph g(ws);
  for (int step = 0; step < 2; ++step) {
    g.clear();
    ws.reset();
    Var* v = ops::add(g, g.input(x.t, "x"), g.param(w.t, dw.t, "w"));
    for (int i = 1; i < layers; ++i) v = ops::scale(g, v, 0.5f);
    Var* loss = ops::sum(g, v);
    g.backward(loss);
    EXPECT_FLOAT_EQ(to_host_f32(dw.t)[0], std::ldexp(1.0f, 1 - layers) * (step + 1));
    EXPECT_EQ(to_host_f32(loss->value)[0], 2.0f * std::ldexp(1.0f, 1 - layers) * static_cast<float>(n))
        << "the loss is kept";
  }
  // Forward: L values; backward: the gradients of two adjacent layers at a time, in released space.
  EXPECT_LE(ws.high_water(), (layers + 2) * tensor + 4096) << "the gradients did not reuse the released values";
  EXPECT_GE(ws.high_water(), layers * tensor);
  EXPECT_LT(ws.used(), 4096u) << "only the loss and its gradient should be left after backward";
}

TEST(Graph, ReleasedIntermediateGradientIsAnErrorUnlessKept) {
  OwnedTensor x(Device::CPU, Shape{4}), w(Device::CPU, Shape{4}), dw(Device::CPU, Shape{4});
  fill_value(x.t, 1.0f);
  fill_value(w.t, 2.0f);
  Workspace ws(Device::CPU);
  Graph g(ws);
  Var* h = ops::add(g, g.input(x.t, "x"), g.param(w.t, dw.t, "w"));
  Var* kept = ops::scale(g, h, 3.0f);
  g.keep(kept);
  g.backward(ops::sum(g, ops::scale(g, kept, 2.0f)));
  EXPECT_EQ(to_host_f32(g.grad(kept)), std::vector<float>(4, 2.0f));
  EXPECT_EQ(to_host_f32(kept->value), std::vector<float>(4, 9.0f));
  try {
    g.grad(h);
    ADD_FAILURE() << "a released gradient was handed out";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(h->value.defined());
}

// relu_ and add_ take over their input's memory where the producer allows it, and compute out of
// place where it does not (a graph input); values and gradients equal the out-of-place ops'.
TEST(Graph, InPlaceOpsReuseTheInputOnlyWhereAllowed) {
  OwnedTensor a(Device::CPU, Shape{2, 8}), b(Device::CPU, Shape{2, 8}), da(Device::CPU, Shape{2, 8}),
      db(Device::CPU, Shape{2, 8});
  std::vector<float> av(16), bv(16);
  for (int i = 0; i < 16; ++i) av[size_t(i)] = 0.25f * static_cast<float>(i - 7), bv[size_t(i)] = 0.1f * (i % 5) - 0.2f;
  from_host(a.t, av);
  from_host(b.t, bv);
  std::vector<float> grads[2][2], values[2];
  for (int in_place = 0; in_place < 2; ++in_place) {
    Workspace ws(Device::CPU);
    Graph g(ws);
    fill_zero(da.t);
    fill_zero(db.t);
    Var* pa = g.param(a.t, da.t, "a");
    Var* pb = g.param(b.t, db.t, "b");
    Var* s = ops::add(g, pa, pb);  // overwritable
    void* s_memory = s->value.ptr;
    Var* r = in_place ? ops::relu_(g, s) : ops::relu(g, s);
    Var* t = in_place ? ops::add_(g, r, pa) : ops::add(g, r, pa);  // r is a relu output: not overwritable
    EXPECT_EQ(r->value.ptr == s_memory, in_place == 1);
    EXPECT_NE(t->value.ptr, r->value.ptr) << "add_ overwrote a relu output its backward reads";
    void* t_memory = t->value.ptr;
    Var* u = in_place ? ops::add_(g, t, pb) : ops::add(g, t, pb);  // t is an add's output: overwritable
    EXPECT_EQ(u->value.ptr == t_memory, in_place == 1);
    EXPECT_FALSE(ops::relu_(g, g.input(a.t, "input"))->value.ptr == a.t.ptr) << "a graph input was overwritten";
    g.keep(u);
    values[in_place] = to_host_f32(u->value);
    g.backward(ops::sum(g, ops::scale(g, u, 2.0f)));
    grads[in_place][0] = to_host_f32(da.t);
    grads[in_place][1] = to_host_f32(db.t);
  }
  EXPECT_EQ(values[0], values[1]);
  EXPECT_EQ(grads[0][0], grads[1][0]);
  EXPECT_EQ(grads[0][1], grads[1][1]);
}

// A ResNet-18 train step with the BatchNorm + ReLU outputs inside blocks recomputed in the
// backward (ops::batch_norm_relu_conv2d, Model::recompute_bn_relu) holds one activation less
// per block at the end of the forward, exactly those bytes, and its high-water drops with it.
TEST(Workspace, RecomputedBatchNormReluIsNotHeldForTheStep) {
  ModelSpec spec;
  spec.arch = "resnet18";
  spec.stem = "cifar";
  spec.width = 16;
  spec.num_classes = 10;
  const int64_t n = 8, side = 32;
  OwnedTensor images(Device::CPU, Shape{n, 3, side, side}), labels(Device::CPU, Shape{n}, DType::I32);
  fill_value(images.t, 0.5f);
  from_host(labels.t, std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7});
  size_t held[2], high_water[2];
  for (int recompute = 0; recompute < 2; ++recompute) {
    auto m = make_model(spec, Device::CPU);
    m->set_recompute_bn_relu(recompute == 1);
    Workspace ws(Device::CPU);
    Graph g(ws);
    for (int step = 0; step < 2; ++step) {  // the second step runs without spills
      g.clear();
      ws.reset();
      fill_zero(m->grads().all());
      Var* loss = ops::cross_entropy(g, m->forward(g, g.input(images.t, "images"), true), labels.t);
      held[recompute] = ws.used();
      g.backward(loss);
    }
    EXPECT_EQ(ws.spills(), 0);
    high_water[recompute] = ws.high_water();
  }
  // relu(bn1) of each basic block: (N, W, 32, 32), (N, 2W, 16, 16), ... two blocks a stage.
  size_t recomputed = 0;
  for (int64_t stage = 0, c = spec.width, s = side; stage < 4; ++stage, c *= 2, s /= 2)
    recomputed += 2 * size_t(n * c * s * s) * sizeof(float);
  EXPECT_EQ(held[0] - held[1], recomputed) << "held at the end of the forward: " << held[0] << " unfused, "
                                           << held[1] << " recomputed";
  // The high-water drops by less: the backward now needs more above what the forward holds
  // (bench train-step, width 64, batch 64: 48.1 of the 60 MiB).
  EXPECT_LE(high_water[1] + recomputed * 3 / 4, high_water[0])
      << "step high-water: " << high_water[0] << " unfused, " << high_water[1] << " recomputed";
}

// ---- parameter table and arena -------------------------------------------------------

// `bn_weight`: the name of the BatchNorm weight (a table of the same sizes under other names).
ParamTable small_net(const std::string& bn_weight = "bn1.weight") {
  ParamTable t;
  t.add("conv1.weight", Shape{8, 3, 3, 3}, ParamKind::ConvWeight);
  t.add(bn_weight, Shape{8}, ParamKind::BnWeight);
  t.add("bn1.bias", Shape{8}, ParamKind::BnBias);
  t.add("fc.weight", Shape{10, 8}, ParamKind::LinearWeight);
  t.add("fc.bias", Shape{10}, ParamKind::Bias);
  return t;
}

TEST(ParamTable, OffsetsAreAlignedWithAGapAfterEverySlot) {
  const ParamTable t = small_net();
  ASSERT_EQ(t.size(), 5u);
  EXPECT_EQ(t[0].offset, 0);
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t[i].offset % ParamTable::kAlign, 0) << t[i].name;
    EXPECT_EQ(t[i].numel, t[i].shape.numel());
    const int64_t next = i + 1 < t.size() ? t[i + 1].offset : t.arena_numel();
    EXPECT_GT(next, t[i].offset + t[i].numel) << "no canary gap after " << t[i].name;
  }
  EXPECT_EQ(t[1].offset, 224);  // 216 conv weights, rounded up past a gap to 16-float blocks
  EXPECT_EQ(t.total_numel(), 216 + 8 + 8 + 80 + 10);
  EXPECT_EQ(t.find("fc.bias"), 4);
  EXPECT_EQ(t.find("fc.nothing"), -1);
  EXPECT_THROW(ParamTable(t).add("fc.bias", Shape{10}, ParamKind::Bias), Error);
  EXPECT_THROW(ParamTable(t).add("conv1.weight", Shape{4}, ParamKind::Bias), Error);  // slot 0 counts too
}

TEST(ParamTable, EmptyShapesAreRejected) {
  ParamTable t;
  EXPECT_THROW(t.add("scalar", Shape{}, ParamKind::Bias), Error);
  EXPECT_THROW(t.add("zero", Shape{0}, ParamKind::Bias), Error);
  EXPECT_THROW(t.add("zero_rows", Shape{0, 4}, ParamKind::LinearWeight), Error);
  EXPECT_EQ(t.size(), 0u);
}

TEST(ParamTable, ChannelFragmentsGroupAWeightWithItsVectors) {
  ParamTable t = small_net();
  t.add("orphan", Shape{5}, ParamKind::Bias);  // no multi-dim slot with 5 channels: its own ids
  EXPECT_EQ(t[0].channels, 8);
  EXPECT_EQ(t[0].channel_fragment_base, 0);
  EXPECT_EQ(t[1].channel_fragment_base, 0);  // bn1 shares conv1's channels
  EXPECT_EQ(t[2].channel_fragment_base, 0);
  EXPECT_EQ(t[3].channel_fragment_base, 8);  // fc gets new ids
  EXPECT_EQ(t[4].channel_fragment_base, 8);  // and its bias shares them
  EXPECT_EQ(t[5].channel_fragment_base, 18);
  EXPECT_EQ(t.channel_fragments(), 23);
}

// Vectors follow the *latest* multi-dim slot of their width (conv2's BN, not conv1's), and a
// vector never shares with another vector: with no weight of its width it gets fresh ids.
TEST(ParamTable, ChannelFragmentsFollowTheLatestWeightOnly) {
  ParamTable t;
  t.add("conv1.weight", Shape{4, 3, 3, 3}, ParamKind::ConvWeight);  // ids 0..3
  t.add("bn1.weight", Shape{4}, ParamKind::BnWeight);
  t.add("conv2.weight", Shape{4, 4, 1, 1}, ParamKind::ConvWeight);  // ids 4..7
  t.add("bn2.weight", Shape{4}, ParamKind::BnWeight);
  t.add("a", Shape{6}, ParamKind::Bias);  // ids 8..13
  t.add("b", Shape{6}, ParamKind::Bias);  // ids 14..19
  EXPECT_EQ(t[1].channel_fragment_base, 0);
  EXPECT_EQ(t[2].channel_fragment_base, 4);
  EXPECT_EQ(t[3].channel_fragment_base, 4);
  EXPECT_EQ(t[4].channel_fragment_base, 8);
  EXPECT_EQ(t[5].channel_fragment_base, 14);
  EXPECT_EQ(t.channel_fragments(), 20);
}

TEST(ParamTable, SlotOfFindsOwnersAndGaps) {
  const ParamTable t = small_net();
  EXPECT_EQ(t.slot_of(0), 0);
  EXPECT_EQ(t.slot_of(215), 0);
  EXPECT_EQ(t.slot_of(216), -1);  // the gap after conv1.weight
  EXPECT_EQ(t.slot_of(t[1].offset), 1);
  EXPECT_EQ(t.slot_of(t[4].offset + 9), 4);
  EXPECT_EQ(t.slot_of(t[4].offset + 10), -1);
  EXPECT_EQ(t.slot_of(-1), -1);
  EXPECT_EQ(t.slot_of(t.arena_numel()), -1);
}

TEST(ParamTable, SameLayout) {
  const ParamTable a = small_net(), b = small_net();
  EXPECT_TRUE(a.same_layout(b));
  ParamTable c = small_net();
  c.add("extra", Shape{3}, ParamKind::Bias);
  EXPECT_FALSE(a.same_layout(c));
  // Each of name, shape and kind alone makes a different layout, even with equal offsets.
  auto one_slot = [](const char* name, Shape shape, ParamKind kind) {
    ParamTable t;
    t.add(name, shape, kind);
    return t;
  };
  const ParamTable base = one_slot("w", Shape{4, 6}, ParamKind::LinearWeight);
  EXPECT_TRUE(base.same_layout(one_slot("w", Shape{4, 6}, ParamKind::LinearWeight)));
  EXPECT_FALSE(base.same_layout(one_slot("v", Shape{4, 6}, ParamKind::LinearWeight)));
  EXPECT_FALSE(base.same_layout(one_slot("w", Shape{6, 4}, ParamKind::LinearWeight)));
  EXPECT_FALSE(base.same_layout(one_slot("w", Shape{4, 6}, ParamKind::ConvWeight)));
}

TEST(ParamKind, NamesAreDistinct) {
  const ParamKind all[] = {ParamKind::ConvWeight, ParamKind::LinearWeight, ParamKind::Bias,
                           ParamKind::BnWeight,   ParamKind::BnBias,       ParamKind::BnRunningMean,
                           ParamKind::BnRunningVar, ParamKind::BnNumBatches};
  std::vector<std::string> names;
  for (ParamKind k : all) names.push_back(param_kind_name(k));
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::unique(names.begin(), names.end()), names.end());
  EXPECT_STREQ(param_kind_name(ParamKind::BnRunningMean), "bn-running-mean");
  EXPECT_STREQ(param_kind_name(ParamKind::BnRunningVar), "bn-running-var");
}

TEST(Arena, SlotLookupsOutsideTheTableAreErrors) {
  const ParamTable t = small_net();
  Arena a(t, Device::CPU);
  EXPECT_EQ(a.slot(t.size() - 1).shape, (Shape{10}));
  EXPECT_THROW(a.slot(t.size()), Error);
  try {
    a.slot("fc.nothing");
    ADD_FAILURE() << "a missing name was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no parameter named 'fc.nothing'"), std::string::npos) << e.what();
  }
}

TEST(Arena, CopyFromCopiesEverythingAndNeedsTheSameLayout) {
  const ParamTable t = small_net(), same = small_net();
  Arena src(t, Device::CPU), dst(same, Device::CPU);
  src.write_canaries();
  for (size_t i = 0; i < t.size(); ++i) fill_value(src.slot(i), static_cast<float>(i + 1));
  dst.copy_from(src);
  for (size_t i = 0; i < t.size(); ++i)
    for (float v : to_host_f32(dst.slot(i))) ASSERT_EQ(v, static_cast<float>(i + 1)) << t[i].name;
  EXPECT_TRUE(dst.broken_canaries().empty());  // the gaps travel too: one copy of the whole arena

  ParamTable other = small_net();
  other.add("extra", Shape{3}, ParamKind::Bias);
  Arena wrong(other, Device::CPU);
  EXPECT_THROW(wrong.copy_from(src), Error);
  // Same size, different names: still refused, although one memcpy would fit.
  const ParamTable renamed = small_net("bn1.gamma");
  ASSERT_EQ(renamed.arena_numel(), t.arena_numel());
  Arena other_names(renamed, Device::CPU);
  EXPECT_THROW(other_names.copy_from(src), Error);
}

// Linear forward and backward on arena slots must stay inside them.
TEST(Arena, CanariesSurviveOpsOnSlots) {
  ParamTable t;
  t.add("fc1.weight", Shape{7, 5}, ParamKind::LinearWeight);
  t.add("fc1.bias", Shape{7}, ParamKind::Bias);
  t.add("fc2.weight", Shape{3, 7}, ParamKind::LinearWeight);
  t.add("fc2.bias", Shape{3}, ParamKind::Bias);
  Arena params(t, Device::CPU), grads(t, Device::CPU);
  for (size_t i = 0; i < t.size(); ++i) fill_value(params.slot(i), 0.05f * static_cast<float>(i + 1));
  params.write_canaries();
  grads.write_canaries();
  ASSERT_TRUE(params.broken_canaries().empty());

  OwnedTensor x(Device::CPU, Shape{4, 5}), labels(Device::CPU, Shape{4}, DType::I32);
  fill_value(x.t, 0.3f);
  from_host(labels.t, std::vector<int32_t>{0, 1, 2, 1});
  Workspace ws(Device::CPU);
  Graph g(ws);
  auto p = [&](const char* name) { return g.param(params.slot(name), grads.slot(name), name); };
  Var* h = ops::relu(g, ops::linear(g, g.input(x.t), p("fc1.weight"), p("fc1.bias")));
  g.backward(ops::cross_entropy(g, ops::linear(g, h, p("fc2.weight"), p("fc2.bias")), labels.t));

  EXPECT_NE(to_host_f32(grads.slot("fc2.bias"))[0], 0.0f);  // the ops did write the slots
  EXPECT_TRUE(params.broken_canaries().empty());
  const std::vector<std::string> broken = grads.broken_canaries();
  EXPECT_TRUE(broken.empty()) << broken.front();
}

TEST(Arena, BrokenCanaryIsReportedWithItsSlot) {
  const ParamTable t = small_net();
  Arena a(t, Device::CPU);
  a.write_canaries();
  Tensor bn = a.slot("bn1.weight");
  bn.f32()[bn.numel()] = 0.0f;  // one element past the slot
  const std::vector<std::string> broken = a.broken_canaries();
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_NE(broken[0].find("bn1.weight"), std::string::npos) << broken[0];
}

// One report per damaged gap, naming its first bad element; the gap after the last slot (up to
// arena_numel) is checked to its very end.
TEST(Arena, EachBrokenGapIsReportedOnceAtItsFirstBadElement) {
  const ParamTable t = small_net();
  Arena a(t, Device::CPU);
  a.write_canaries();
  float* p = a.data();
  p[217] = 0.0f;  // conv1.weight is elements 0..215; its gap runs to 224
  p[220] = 0.0f;
  p[t.arena_numel() - 1] = 0.0f;  // last element of the arena, in the gap after fc.bias
  const std::vector<std::string> broken = a.broken_canaries();
  ASSERT_EQ(broken.size(), 2u);
  EXPECT_EQ(broken[0], "after slot 'conv1.weight' (element 217)");
  EXPECT_EQ(broken[1], "after slot 'fc.bias' (element " + std::to_string(t.arena_numel() - 1) + ")");
}

}  // namespace
}  // namespace tessera
