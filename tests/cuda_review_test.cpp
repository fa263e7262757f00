// The CUDA backend's host-side rules, tested on every machine (issue 13's review of the CUDA
// code, written before a GPU ran it): the cuDNN algorithm picker (kernels/common/conv_algo.h),
// the failure reports of the CUDA dispatch and its sync check (engine/dispatch.h), and the
// flags that set them (--math, --allow-nondeterministic, --sync-check); the index and
// reduction rules of the review's speed fixes (FastDivmod, the teacher's ChunkRows, LARS's
// trust ratios), and CUDA-vs-CPU checks of the kernels they changed (SKIPPED without a GPU).
// BatchNorm's kernels have their own file: tests/batch_norm_kernels_test.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if TESSERA_CUDA
#include <cuda_runtime.h>
#endif

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "engine/check.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/profile.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "data/loader.h"
#include "kernels/augment.h"
#include "kernels/common/conv_algo.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/fast_divmod.h"
#include "kernels/linear.h"
#include "kernels/loss.h"
#include "kernels/optimizer.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/teacher_update.h"
#include "tests/op_case.h"
#include "tests/thrown.h"
#if TESSERA_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace tessera {
namespace {

using kernels::AlgoCandidate;
using kernels::AlgoMath;
using kernels::AlgoRequest;

AlgoCandidate cand(int algo, bool deterministic, AlgoMath math, size_t memory = 0, bool ok = true) {
  AlgoCandidate c;
  c.algo = algo;
  c.succeeded = ok;
  c.deterministic = deterministic;
  c.math = math;
  c.memory = memory;
  return c;
}

AlgoRequest request(bool tf32, bool deterministic) {
  AlgoRequest r;
  r.tf32 = tf32;
  r.deterministic = deterministic;
  r.max_memory = 1000;
  return r;
}

// The heuristics list fastest first; a tensor-op (TF32) algorithm ahead of an FMA one is the
// usual order on Ampere and later. The old picker ignored mathType and took the first.
TEST(ConvAlgoPicker, Fp32SkipsCandidatesWhoseMathIsNotFma) {
  const std::vector<AlgoCandidate> c = {cand(1, true, AlgoMath::TensorOp), cand(6, true, AlgoMath::Default),
                                        cand(0, true, AlgoMath::Fma)};
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 3, request(false, true)), 2);
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 3, request(true, true)), 0);
}

TEST(ConvAlgoPicker, NeverTakesTheFp16ConversionMath) {
  const std::vector<AlgoCandidate> c = {cand(1, true, AlgoMath::TensorOpAllowConversion),
                                        cand(2, true, AlgoMath::TensorOp)};
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 2, request(true, true)), 1);
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 1, request(true, false)), -1);
}

TEST(ConvAlgoPicker, DeterministicUnlessAllowedOtherwise) {
  const std::vector<AlgoCandidate> c = {cand(3, false, AlgoMath::Fma), cand(1, true, AlgoMath::Fma)};
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 2, request(false, true)), 1);
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 2, request(false, false)), 0);  // the fastest
}

// The old picker fell back to a nondeterministic algorithm silently; now that is an error,
// and the message says what ruled out each candidate.
TEST(ConvAlgoPicker, NoDeterministicCandidateIsAnErrorNotAFallback) {
  const std::vector<AlgoCandidate> c = {cand(3, false, AlgoMath::Fma), cand(5, true, AlgoMath::Fma, 5000),
                                        cand(7, true, AlgoMath::Fma, 0, /*ok=*/false),
                                        cand(1, true, AlgoMath::TensorOp)};
  std::string why;
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 4, request(false, true), &why), -1);
  EXPECT_NE(why.find("no deterministic algorithm with FP32 math"), std::string::npos) << why;
  EXPECT_NE(why.find("algo 3: nondeterministic"), std::string::npos) << why;
  EXPECT_NE(why.find("algo 5: workspace over the limit"), std::string::npos) << why;
  EXPECT_NE(why.find("algo 7: not supported"), std::string::npos) << why;
  EXPECT_NE(why.find("algo 1: tensor-op math"), std::string::npos) << why;
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 4, request(false, false)), 0);
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 0, request(false, false), &why), -1);
  EXPECT_NE(why.find("none listed"), std::string::npos) << why;
}

// A candidate the heuristics listed can still refuse to run; conv.cu then asks the rule again
// from the next candidate on, within the scratch the call was given.
TEST(ConvAlgoPicker, FallbackTakesTheNextUsableCandidateThatFitsTheScratch) {
  const std::vector<AlgoCandidate> c = {cand(1, true, AlgoMath::Fma, 100), cand(2, false, AlgoMath::Fma, 10),
                                        cand(3, true, AlgoMath::Fma, 5000), cand(4, true, AlgoMath::Fma, 50)};
  AlgoRequest r = request(false, true);
  r.max_memory = 1000;  // the scratch given
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 4, r), 0);
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 4, r, nullptr, 1), 3);  // 2 nondeterministic, 3 over the scratch
  std::string why;
  EXPECT_EQ(kernels::pick_conv_algo(c.data(), 4, r, &why, 4), -1);
  EXPECT_NE(why.find("none after those tried"), std::string::npos) << why;
}

// Only a refusal of the algorithm moves a pass to the next candidate. A fault an earlier kernel
// left shows at cuDNN's launch as EXECUTION_FAILED_CUDART / _CUDA_DRIVER; a broken install as
// NOT_SUPPORTED's driver / runtime / architecture / sub-library kinds. Falling back on those
// would try every candidate, fail alike, and blame the convolution.
TEST(ConvAlgoPicker, OnlyARefusalOfTheAlgorithmFallsBack) {
  for (int refusal : {3000, 3002, 3003, 3004, 3010, 3011, 3012, 5000})
    EXPECT_TRUE(kernels::cudnn_status_is_refusal(refusal)) << refusal;
  for (int fault : {0, 2000, 2002, 3005, 3006, 3007, 3008, 3009, 4000, 4001, 5001, 5002, 5003, 5004})
    EXPECT_FALSE(kernels::cudnn_status_is_refusal(fault)) << fault;
}

// A tensor cuDNN cannot describe is the engine's error, naming the tensor, before cuDNN's
// BAD_PARAM: at 2^31 elements, not at 2^31 - 1; four factors whose product overflows int64 too.
TEST(ConvAlgoPicker, TensorsOverCudnnsElementLimitAreNamed) {
  EXPECT_EQ(kernels::cudnn_tensor_problem("x", 1, 1, 1, 2147483647), "");
  EXPECT_EQ(kernels::cudnn_tensor_problem("x", 256, 3, 224, 224), "");
  EXPECT_EQ(kernels::cudnn_tensor_problem("conv2d input", 2048, 64, 128, 128),
            "conv2d input: (2048, 64, 128, 128) is 2147483648 elements; cuDNN takes at most 2^31 - 1 per tensor: "
            "lower the batch size (or the image size)");
  EXPECT_NE(kernels::cudnn_tensor_problem("x", int64_t{1} << 40, int64_t{1} << 40, 1 << 20, 1 << 20), "");
}

// ---- failure reports of the CUDA dispatch ---------------------------------------------------

// Restores the CUDA options and the sync probe a test changed.
class DispatchReport : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = cuda_options(); }
  void TearDown() override {
    set_cuda_options(saved_);
    set_sync_probe(nullptr);
  }
  CudaOptions saved_;
};

std::string illegal_address() { return "CUDA error 'an illegal memory access was encountered'"; }
std::string healthy() { return ""; }


// With the sync check on, a fault the device reports after the kernel is raised at that
// kernel, named with its layer and its size arguments.
TEST_F(DispatchReport, SyncCheckNamesTheKernelTheLayerAndTheSizes) {
  CudaOptions o = saved_;
  o.sync_check = true;
  set_cuda_options(o);
  ASSERT_TRUE(sync_check_enabled());
  set_sync_probe(&illegal_address);
  float x = 0;
  int ran = 0;
  const std::string msg = thrown([&] {
    profile::LayerScope layer("layer1.0.conv1.weight");
    cuda_call("max_pool2d_forward", [&] { ++ran; }, static_cast<const float*>(&x), static_cast<float*>(nullptr),
              int64_t{128}, int64_t{32}, int64_t{16}, 3.5f);
  });
  EXPECT_EQ(ran, 1);
  EXPECT_NE(msg.find("max_pool2d_forward [layer1.0.conv1.weight] (0x"), std::string::npos) << msg;
  EXPECT_NE(msg.find(", null, 128, 32, 16, 3.5)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("an illegal memory access"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sync check"), std::string::npos) << msg;

  set_sync_probe(&healthy);
  EXPECT_NO_THROW(cuda_call("fill", [] {}, int64_t{4}));
}

// Off, the probe is never consulted: a later call would see the fault, as without the check.
TEST_F(DispatchReport, WithoutTheSyncCheckTheDeviceIsNotQueried) {
  CudaOptions o = saved_;
  o.sync_check = false;
  set_cuda_options(o);
  if (sync_check_enabled()) GTEST_SKIP() << "TESSERA_SYNC_CHECK is set in this environment";
  set_sync_probe(&illegal_address);
  EXPECT_NO_THROW(cuda_call("fill", [] {}, int64_t{4}));
}

// A kernel's own failure (a bad status, cuDNN without an algorithm) names the op and layer;
// the convolution's shape reads as shapes.
TEST_F(DispatchReport, KernelFailureNamesTheOpTheLayerAndTheShape) {
  kernels::Conv2dShape s;
  s.n = 8, s.c = 3, s.h = 32, s.w = 32, s.o = 16, s.kh = 3, s.kw = 3, s.stride = 1, s.pad = 1, s.ho = 32, s.wo = 32;
  const std::string msg = thrown([&] {
    profile::LayerScope layer("layer2.0.conv1.weight");
    cuda_call(
        "conv2d_workspace_size", [] { throw std::runtime_error("cuDNN error 'no deterministic algorithm'"); }, s);
  });
  EXPECT_NE(msg.find("conv2d_workspace_size [layer2.0.conv1.weight] (x (8, 3, 32, 32) w (16, 3, 3, 3) stride 1 pad 1)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("no deterministic algorithm"), std::string::npos) << msg;
}

// ---- flags -------------------------------------------------------------------------------

RunOptions parse_run(std::vector<const char*> args) {
  Options o("t", "test");
  RunOptions r;
  add_run_options(o, r);
  args.insert(args.begin(), "t");
  o.parse(static_cast<int>(args.size()), args.data());
  return r;
}

TEST_F(DispatchReport, MathAndDeterminismFlags) {
  const CudaOptions d = cuda_options_of(parse_run({}));
  EXPECT_EQ(d.math, MathMode::Pytorch);  // TF32 convolutions, FP32 GEMMs, as PyTorch
  EXPECT_FALSE(d.allow_nondeterministic);
  EXPECT_FALSE(d.sync_check);
  const CudaOptions f = cuda_options_of(parse_run({"--math", "fp32", "--allow-nondeterministic", "--sync-check"}));
  EXPECT_EQ(f.math, MathMode::Fp32);
  EXPECT_TRUE(f.allow_nondeterministic);
  EXPECT_TRUE(f.sync_check);
  EXPECT_EQ(cuda_options_of(parse_run({"--math=tf32"})).math, MathMode::Tf32);
  try {
    parse_run({"--math", "fp16"});
    ADD_FAILURE() << "--math fp16 accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--math"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_math_mode("bf16"), UsageError);
  EXPECT_TRUE(changeable_on_resume("sync-check"));
  EXPECT_TRUE(changeable_on_resume("allow-nondeterministic"));
  EXPECT_FALSE(changeable_on_resume("math"));  // TF32 changes the arithmetic
}

// A program applies its flags when its TrainingRun is made, before any kernel runs.
TEST_F(DispatchReport, TrainingRunAppliesTheFlags) {
  Options o("byol", "test");
  RunOptions r;
  add_run_options(o, r);
  const std::string out = cat(::testing::TempDir(), "tessera_cuda_flags_", ::getpid(), "_run");
  const std::string out_flag = "--out=" + out;
  const char* argv[] = {"byol", "--math", "tf32", "--allow-nondeterministic", out_flag.c_str()};
  ASSERT_TRUE(o.parse(5, argv));
  TrainingRun run("byol", o, r);
  EXPECT_EQ(cuda_options().math, MathMode::Tf32);
  EXPECT_TRUE(cuda_options().allow_nondeterministic);
}

// ---- augment bounds ------------------------------------------------------------------------

// Three 1x4x4 images normalised (no random op); the batch asks for image `bad` at position 1.
struct AugmentBatch {
  std::vector<uint8_t> images = std::vector<uint8_t>(3 * 16, 100);
  std::vector<int64_t> indices, epochs{0, 0};
  kernels::AugmentSpec spec;
  explicit AugmentBatch(int64_t bad) : indices{0, bad} {
    spec.recipe = kernels::kRecipeNormalize;
    spec.channels = 1;
    spec.in_h = spec.in_w = spec.out_h = spec.out_w = 4;
    spec.pad = 0;
    spec.blur_radius = 1;
  }
};

TEST(AugmentBounds, CpuKernelRefusesAnIndexOutsideTheImages) {
  for (int64_t bad : {int64_t{3}, int64_t{-1}}) {
    AugmentBatch b(bad);
    std::vector<float> out(2 * 16), scratch(out.size());
    try {
      kernels::cpu::augment(b.images.data(), 3, b.indices.data(), b.epochs.data(), 2, b.spec, out.data(),
                            scratch.data());
      ADD_FAILURE() << "index " << bad << " accepted";
    } catch (const std::out_of_range& e) {
      EXPECT_NE(std::string(e.what()).find("image index " + std::to_string(bad) + " at batch position 1, expected in [0, 3)"),
                std::string::npos)
          << e.what();
    }
  }
  AugmentBatch ok(2);
  std::vector<float> out(2 * 16), scratch(out.size());
  EXPECT_NO_THROW(kernels::cpu::augment(ok.images.data(), 3, ok.indices.data(), ok.epochs.data(), 2, ok.spec,
                                        out.data(), scratch.data()));
}

// The CUDA kernel traps on a bad index, which ends the process's CUDA context: so the kernel
// runs in a child (this binary, this test, TESSERA_TESTS_AUGMENT_TRAP=1), with the sync check
// on, and the parent reads what the child reported.
TEST(AugmentBoundsCuda, OutOfRangeIndexTrapsAndIsReportedByTheKernel) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "augment on CUDA not run: " << reason;
  if (const char* child = std::getenv("TESSERA_TESTS_AUGMENT_TRAP"); child && std::string(child) == "1") {
    CudaOptions o = cuda_options();
    o.sync_check = true;
    set_cuda_options(o);
    AugmentBatch b(7);
    OwnedTensor images(Device::CUDA, Shape{3 * 16}, DType::U8), keys(Device::CUDA, Shape{4}, DType::I32),
        epochs(Device::CUDA, Shape{4}, DType::I32), out(Device::CUDA, Shape{2 * 16}), scratch(Device::CUDA, Shape{2 * 16});
    copy_from_host(images.t, b.images.data(), b.images.size());
    copy_from_host(keys.t, b.indices.data(), 16);
    copy_from_host(epochs.t, b.epochs.data(), 16);
    const auto* idx = static_cast<const int64_t*>(keys.t.ptr);
    const auto* ep = static_cast<const int64_t*>(epochs.t.ptr);
    const std::string msg = thrown([&] {
      TS_DISPATCH(Device::CUDA, augment, images.t.u8(), int64_t{3}, idx, ep, int64_t{2}, b.spec, out.t.f32(),
                  scratch.t.f32());
    });
    std::printf("child report: %s\n", msg.c_str());
    EXPECT_EQ(msg.rfind("augment (", 0), 0u) << msg;
    EXPECT_NE(msg.find("sync check"), std::string::npos) << msg;
    std::fflush(stdout);
    std::_Exit(::testing::Test::HasFailure() ? 1 : 0);  // the context is gone: no orderly teardown
  }
  namespace fs = std::filesystem;
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const fs::path log = fs::temp_directory_path() / ("tessera_augment_trap_" + std::to_string(::getpid()));
  // Not a shard of a sharded run (gpu-check): the child's one test would land in shard 0 only.
  const std::string cmd = "env -u GTEST_TOTAL_SHARDS -u GTEST_SHARD_INDEX TESSERA_TESTS_AUGMENT_TRAP=1 '" + self.string() +
                          "' --gtest_filter=AugmentBoundsCuda.OutOfRangeIndexTrapsAndIsReportedByTheKernel > '" +
                          log.string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  fs::remove(log);
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << text.str();
  EXPECT_NE(text.str().find("augment: image index 7 at batch position 1, expected in [0, 3)"), std::string::npos)
      << "the device printf did not reach the output:\n" << text.str();
}

// ---- index math without 64-bit division ----------------------------------------------------

// The pooling and broadcast kernels divide by W, WO and the stride with FastDivmod; its host
// form is the device's (the multiply-high emulated), so / and % are checked here.
TEST(FastDivmod, EqualsDivisionAndRemainderOverItsDomain) {
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 1100; ++d) divisors.push_back(d);
  for (int k = 11; k < 31; ++k)
    for (int64_t e : {-1, 0, 1}) divisors.push_back((int64_t{1} << k) + e);
  divisors.push_back(kernels::cuda::kMaxIndex32);
  std::vector<uint32_t> numerators;
  for (uint32_t n = 0; n < 5000; ++n) numerators.push_back(n);
  kernels::PhiloxState r(5, 0, 0);
  for (int i = 0; i < 2000; ++i) numerators.push_back(r.next_u32() >> 1);
  for (uint32_t n : {0x7ffffffeu, 0x7fffffffu, 0x40000000u, 0x3fffffffu}) numerators.push_back(n);
  for (int64_t d : divisors) {
    const kernels::cuda::FastDivmod f(d);
    for (uint32_t n : numerators) {
      uint32_t rem = 0;
      const uint32_t q = f.divmod(n, &rem);
      ASSERT_EQ(q, n / uint32_t(d)) << n << " / " << d;
      ASSERT_EQ(rem, n % uint32_t(d)) << n << " % " << d;
    }
  }
}

// Channel fragment ids the CUDA teacher kernel forms per group of 4 (ChunkRows, 32-bit) equal
// teacher_fragment's 64-bit formula for every element, in chunks that start mid-row, for rows
// shorter than a group, of odd lengths and longer than a chunk; the 64-bit fallback too.
TEST(TeacherChunkRows, GroupFragmentsEqualTheTableDefinition) {
  const int64_t chunk = kernels::cpu::kTeacherChunk;
  int64_t offset = 32, base = 5;
  int64_t checked = 0, elements = 0;
  int32_t index = 0;
  for (int64_t row : {1, 2, 3, 27, 1000, 3000, 4095, 4096, 4097, 10007}) {
    kernels::TeacherSlot s{};
    s.offset = offset;
    s.row_numel = row;
    s.numel = row * (row < 100 ? 37 : 3);
    s.channel_fragment_base = base;
    s.index = index++;
    ASSERT_TRUE(kernels::ChunkRows::fits(s, chunk));
    elements += s.numel;
    for (int64_t b = s.offset; b < s.offset + s.numel; b += chunk) {
      const kernels::ArenaChunk c{b, std::min(b + chunk, s.offset + s.numel), s.index};
      const kernels::ChunkRows rows(s, c);
      for (int64_t g = c.begin; g < c.end; g += 4) {
        uint64_t fast[4], wide[4], tensor[4];
        kernels::teacher_group_fragments(s, rows, true, kernels::Granularity::Channel, g, fast);
        kernels::teacher_group_fragments(s, rows, false, kernels::Granularity::Channel, g, wide);
        kernels::teacher_group_fragments(s, rows, true, kernels::Granularity::Tensor, g, tensor);
        for (int64_t j = 0; j < 4 && g + j < c.end; ++j) {
          const uint64_t want = kernels::teacher_fragment(s, kernels::Granularity::Channel, g + j);
          ASSERT_EQ(want, uint64_t(base + (g + j - s.offset) / row));  // the table's own definition
          ASSERT_EQ(fast[j], want) << "row " << row << " element " << g + j - s.offset;
          ASSERT_EQ(wide[j], want) << "row " << row << " element " << g + j - s.offset;
          ASSERT_EQ(tensor[j], uint64_t(s.index));
          ++checked;
        }
      }
    }
    base += s.numel / row;
    offset += (s.numel + 15) / 16 * 16 + 16;
  }
  EXPECT_EQ(checked, elements);
  kernels::TeacherSlot huge{};
  huge.row_numel = (int64_t{1} << 31) - 100;
  huge.numel = 2 * huge.row_numel;
  EXPECT_FALSE(kernels::ChunkRows::fits(huge, chunk));  // such rows take the 64-bit path
}

// ---- LARS trust ratios ------------------------------------------------------------------------

// A table of LARS slots of very different sizes and scales: one element, a chunk and one more,
// 74 chunks, 269 chunks (more than the 256 lanes of the final pass), a zero weight, a zero
// gradient, an excluded tensor. Chunks of kOptimizerChunk elements, cut per slot.
struct LarsCase {
  std::vector<kernels::OptimizerSlot> slots;
  std::vector<kernels::ArenaChunk> chunks;
  std::vector<float> w, g;
  kernels::LarsParams p{0.1f, 0.9f, 0.001f, 1e-9f, 0};
  LarsCase() {
    const int64_t sizes[] = {1, 5, 4096, 4097, 3 * 4096 + 17, 74 * 4096 - 5, 269 * 4096, 1000, 1000, 2000};
    const float scales[] = {3.0f, 1e-3f, 1.0f, 10.0f, 0.5f, 0.02f, 1.0f, 0.0f, 1.0f, 1.0f};
    int64_t offset = 0;
    for (size_t k = 0; k < std::size(sizes); ++k) {
      kernels::OptimizerSlot s{};
      s.offset = offset;
      s.numel = sizes[k];
      s.adapt = k == 9 ? 0 : 1;
      s.weight_decay = s.adapt ? 1.5e-6f : 0.0f;
      s.first_chunk = static_cast<int32_t>(chunks.size());
      for (int64_t b = offset; b < offset + s.numel; b += kernels::cpu::kOptimizerChunk)
        chunks.push_back({b, std::min(b + kernels::cpu::kOptimizerChunk, offset + s.numel), static_cast<int32_t>(k)});
      s.num_chunks = static_cast<int32_t>(chunks.size()) - s.first_chunk;
      slots.push_back(s);
      w.resize(static_cast<size_t>(offset + s.numel));
      g.resize(w.size());
      for (int64_t i = offset; i < offset + s.numel; ++i) {
        const uint64_t u = static_cast<uint64_t>(i);
        w[size_t(i)] = scales[k] * (2.0f * kernels::philox_uniform(1, kernels::kStreamTest, 0, u) - 1.0f);
        g[size_t(i)] = k == 8 ? 0.0f : 0.01f * (2.0f * kernels::philox_uniform(1, kernels::kStreamTest, 1, u) - 1.0f);
      }
      offset += (s.numel + 15) / 16 * 16;
    }
    w.resize(static_cast<size_t>(offset));
    g.resize(w.size());
  }
  int64_t num_chunks() const { return static_cast<int64_t>(chunks.size()); }
  int64_t num_slots() const { return static_cast<int64_t>(slots.size()); }
};

TEST(LarsTrust, PerSlotRatiosMatchAFloat64Reference) {
  const LarsCase k;
  std::vector<float> partials(size_t(2 * k.num_chunks())), trust(size_t(2 * k.num_slots()), -1.0f);
  kernels::cpu::lars_norms(k.slots.data(), k.chunks.data(), k.num_chunks(), k.w.data(), k.g.data(), partials.data());
  kernels::cpu::lars_trust_ratios(k.slots.data(), k.num_slots(), partials.data(), trust.data(), k.p);
  for (int64_t i = 0; i < k.num_slots(); ++i) {
    const kernels::OptimizerSlot& s = k.slots[size_t(i)];
    double ww = 0, gg = 0;
    for (int64_t e = s.offset; e < s.offset + s.numel; ++e) {
      ww += double(k.w[size_t(e)]) * k.w[size_t(e)];
      gg += double(k.g[size_t(e)]) * k.g[size_t(e)];
    }
    const double wn = std::sqrt(ww), gn = std::sqrt(gg);
    const bool adapt = s.adapt && wn > 0 && gn > 0;
    const double want = adapt ? k.p.eta * wn / (gn + s.weight_decay * wn + k.p.eps) : 1.0;
    EXPECT_NEAR(trust[size_t(2 * i)], want, 1e-5 * want) << "slot " << i << " (" << s.numel << " elements)";
    EXPECT_EQ(trust[size_t(2 * i + 1)], adapt ? s.weight_decay : 0.0f) << "slot " << i;
  }
  EXPECT_EQ(trust[2 * 7], 1.0f);  // zero weight: no adaptation, no decay
  EXPECT_EQ(trust[2 * 8], 1.0f);  // zero gradient
  EXPECT_EQ(trust[2 * 9], 1.0f);  // excluded
}

// GPU: from the same partials, the CUDA trust kernel gives the CPU's ratios bit for bit (the
// shared lars_slot_sums order), and the CUDA partials equal the CPU's (lars_chunk_sums).
TEST(LarsTrust, CudaPartialsAndRatiosBitEqualToCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "LARS trust ratios on CUDA not run: " << reason;
  const LarsCase k;
  std::vector<float> partials(size_t(2 * k.num_chunks())), trust(size_t(2 * k.num_slots()));
  kernels::cpu::lars_norms(k.slots.data(), k.chunks.data(), k.num_chunks(), k.w.data(), k.g.data(), partials.data());
  kernels::cpu::lars_trust_ratios(k.slots.data(), k.num_slots(), partials.data(), trust.data(), k.p);
  auto up = [](const void* src, size_t bytes) {
    OwnedTensor t(Device::CUDA, Shape{static_cast<int64_t>((bytes + 3) / 4)});
    copy_from_host(t.t, src, bytes);
    return t;
  };
  OwnedTensor slots = up(k.slots.data(), k.slots.size() * sizeof(kernels::OptimizerSlot));
  OwnedTensor chunks = up(k.chunks.data(), k.chunks.size() * sizeof(kernels::ArenaChunk));
  OwnedTensor w = up(k.w.data(), k.w.size() * 4), g = up(k.g.data(), k.g.size() * 4);
  OwnedTensor dev_partials(Device::CUDA, Shape{2 * k.num_chunks()}), same_partials = up(partials.data(), partials.size() * 4);
  OwnedTensor dev_trust(Device::CUDA, Shape{2 * k.num_slots()});
  const auto* ds = static_cast<const kernels::OptimizerSlot*>(slots.t.ptr);
  const auto* dc = static_cast<const kernels::ArenaChunk*>(chunks.t.ptr);
  TS_DISPATCH(Device::CUDA, lars_norms, ds, dc, k.num_chunks(), w.t.f32(), g.t.f32(), dev_partials.t.f32());
  EXPECT_EQ(to_host_f32(dev_partials.t), partials);
  TS_DISPATCH(Device::CUDA, lars_trust_ratios, ds, k.num_slots(), same_partials.t.f32(), dev_trust.t.f32(), k.p);
  EXPECT_EQ(to_host_f32(dev_trust.t), trust);
}

// ---- CUDA vs CPU for the kernels whose launch shape changed ------------------------------------

std::vector<float> ramp(int64_t n, float phase) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = std::sin(0.37f * float(i % 9973) + phase) + 0.001f * float(i % 7);
  return v;
}

OwnedTensor on(Device d, const std::vector<float>& v) {
  OwnedTensor t(d, Shape{static_cast<int64_t>(v.size())});
  from_host(t.t, v);
  return t;
}

// Planes on the grid: several small planes per block, planes larger than a block's tile, and
// more planes than the grid holds (the kernels' plane loop).
TEST(PoolCuda, PlanesOnTheGridMatchCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "pooling on CUDA not run: " << reason;
  struct Shape2 {
    int64_t planes, h, w, kernel, stride, pad;
  };
  for (const Shape2& c : {Shape2{5, 3, 3, 3, 2, 1}, Shape2{3, 40, 37, 3, 2, 1}, Shape2{2, 7, 9, 2, 2, 0},
                          Shape2{600000, 1, 1, 1, 1, 0}, Shape2{4, 112, 112, 3, 2, 1}}) {
    const int64_t ho = (c.h + 2 * c.pad - c.kernel) / c.stride + 1, wo = (c.w + 2 * c.pad - c.kernel) / c.stride + 1;
    const std::vector<float> x = ramp(c.planes * c.h * c.w, 0.1f), dy = ramp(c.planes * ho * wo, 0.7f),
                             dx0 = ramp(c.planes * c.h * c.w, 1.3f);
    std::vector<std::vector<float>> out[2];
    for (int b = 0; b < 2; ++b) {
      const Device d = b ? Device::CUDA : Device::CPU;
      OwnedTensor tx = on(d, x), tdy = on(d, dy), tdx = on(d, dx0), y(d, Shape{c.planes * ho * wo}),
                  arg(d, Shape{c.planes * ho * wo}, DType::I32);
      TS_DISPATCH(d, max_pool2d_forward, tx.t.f32(), y.t.f32(), static_cast<int32_t*>(arg.t.ptr), c.planes, c.h, c.w,
                  ho, wo, c.kernel, c.stride, c.pad);
      TS_DISPATCH(d, max_pool2d_backward, tdy.t.f32(), static_cast<const int32_t*>(arg.t.ptr), tdx.t.f32(), c.planes,
                  c.h, c.w, ho, wo, c.kernel, c.stride, c.pad);
      const std::vector<int32_t> a = to_host_i32(arg.t);
      out[b] = {to_host_f32(y.t), std::vector<float>(a.begin(), a.end()), to_host_f32(tdx.t)};
    }
    EXPECT_EQ(out[1][0], out[0][0]) << "max pool forward, planes " << c.planes << " h " << c.h;
    EXPECT_EQ(out[1][1], out[0][1]) << "argmax, planes " << c.planes << " h " << c.h;
    for (size_t i = 0; i < out[0][2].size(); ++i)
      ASSERT_NEAR(out[1][2][i], out[0][2][i], 1e-6f * (1.0f + std::fabs(out[0][2][i]))) << "max pool dx[" << i << "]";
  }
  for (auto [planes, hw] : {std::pair<int64_t, int64_t>{600000, 1}, {7, 49}, {3, 3000}, {300, 9}}) {
    const std::vector<float> x = ramp(planes * hw, 0.2f), dy = ramp(planes, 0.9f), dx0 = ramp(planes * hw, 1.1f);
    std::vector<float> y[2], dx[2];
    for (int b = 0; b < 2; ++b) {
      const Device d = b ? Device::CUDA : Device::CPU;
      OwnedTensor tx = on(d, x), tdy = on(d, dy), tdx = on(d, dx0), ty(d, Shape{planes});
      TS_DISPATCH(d, global_avg_pool_forward, tx.t.f32(), ty.t.f32(), planes, hw);
      TS_DISPATCH(d, global_avg_pool_backward, tdy.t.f32(), tdx.t.f32(), planes, hw);
      y[b] = to_host_f32(ty.t);
      dx[b] = to_host_f32(tdx.t);
    }
    for (size_t i = 0; i < y[0].size(); ++i) ASSERT_NEAR(y[1][i], y[0][i], 1e-5f) << "avg pool y[" << i << "] hw " << hw;
    for (size_t i = 0; i < dx[0].size(); ++i) ASSERT_NEAR(dx[1][i], dx[0][i], 1e-6f) << "avg pool dx[" << i << "] hw " << hw;
  }
}

// The bias broadcast with rows on the grid: one column, a few, a row longer than a tile, and
// more rows than the grid holds.
TEST(LinearCuda, BiasBroadcastMatchesCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "linear on CUDA not run: " << reason;
  for (auto [n, out] : {std::pair<int64_t, int64_t>{600000, 1}, {9, 3}, {5, 1000}, {70000, 10}}) {
    const int64_t in = 2;
    const std::vector<float> x = ramp(n * in, 0.3f), w = ramp(out * in, 0.6f), b = ramp(out, 0.8f);
    std::vector<float> y[2];
    for (int k = 0; k < 2; ++k) {
      const Device d = k ? Device::CUDA : Device::CPU;
      OwnedTensor tx = on(d, x), tw = on(d, w), tb = on(d, b), ty(d, Shape{n * out});
      TS_DISPATCH(d, linear_forward, tx.t.f32(), tw.t.f32(), tb.t.f32(), ty.t.f32(), n, in, out);
      y[k] = to_host_f32(ty.t);
    }
    for (size_t i = 0; i < y[0].size(); ++i)
      ASSERT_NEAR(y[1][i], y[0][i], 1e-5f * (1.0f + std::fabs(y[0][i]))) << "y[" << i << "] n " << n << " out " << out;
  }
}

// sum over large tensors: several blocks, then a fixed-order final pass. Against the CPU's
// float64 sum within float32 accumulation error, and bit-identical from run to run.
TEST(SumCuda, LargeSumsSplitOverBlocksAndStayDeterministic) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "sum on CUDA not run: " << reason;
  for (int64_t n : {int64_t{65536}, int64_t{65537}, int64_t{1} << 20, int64_t{20000003}}) {
    const std::vector<float> x = ramp(n, 0.4f);
    double abs_sum = 0;
    for (float v : x) abs_sum += std::fabs(v);
    OwnedTensor cx = on(Device::CPU, x), gx = on(Device::CUDA, x), cy(Device::CPU, Shape{1}), gy(Device::CUDA, Shape{1});
    TS_DISPATCH(Device::CPU, sum_forward, cx.t.f32(), cy.t.f32(), n, 0.5f);
    TS_DISPATCH(Device::CUDA, sum_forward, gx.t.f32(), gy.t.f32(), n, 0.5f);
    const float want = to_host_f32(cy.t)[0], got = to_host_f32(gy.t)[0];
    // Each partial sums n / (blocks * 1024) terms in sequence, then two trees: the error is a
    // few 1e-7 of sum |x| for these sizes; 1e-5 leaves room and still catches a lost block.
    EXPECT_NEAR(got, want, 1e-5 * 0.5 * abs_sum) << "n " << n;
    TS_DISPATCH(Device::CUDA, sum_forward, gx.t.f32(), gy.t.f32(), n, 0.5f);
    EXPECT_EQ(to_host_f32(gy.t)[0], got) << "n " << n << ": not deterministic";
  }
}

// argmax_max_prob with NaN logits (FixMatch's pseudo-labels of a diverging teacher). The CPU's
// rule, `x[j] > x[best]` from best = 0: a NaN at index 0 is the answer, a NaN elsewhere is
// never taken. The CUDA kernel reduces over 32 lanes; a lane that started from a NaN kept it
// and hid the values of its partners (NaN at 1, the maximum at 3: the answer was an even one).
struct NanRow {
  std::vector<float> x;
  int want;  // the CPU rule's answer
};
std::vector<NanRow> nan_rows() {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  auto row = [&](std::vector<std::pair<int, float>> set, int want) {
    NanRow r{std::vector<float>(70), want};
    for (int j = 0; j < 70; ++j) r.x[size_t(j)] = -1.0f - 0.01f * float(j % 13);
    for (auto [j, v] : set) r.x[size_t(j)] = v;
    return r;
  };
  return {row({{1, nan}, {3, 5.0f}}, 3),          row({{0, nan}, {3, 5.0f}}, 0),
          row({{33, nan}, {65, 2.0f}}, 65),       row({{1, nan}, {2, nan}, {31, nan}, {40, 7.0f}}, 40),
          row({{5, inf}, {6, nan}, {7, inf}}, 5), row({{69, nan}, {68, 3.0f}, {36, 3.0f}}, 36)};
}

TEST(ArgmaxMaxProb, CpuSkipsNaNExceptAtIndexZero) {
  for (const NanRow& r : nan_rows()) {
    int32_t arg = -1;
    float prob = 0;
    kernels::cpu::argmax_max_prob(r.x.data(), &arg, &prob, 1, 70);
    EXPECT_EQ(arg, r.want);
  }
}

TEST(ArgmaxMaxProbCuda, NaNLogitsGiveTheCpusAnswer) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "argmax_max_prob on CUDA not run: " << reason;
  std::vector<float> x;
  for (const NanRow& r : nan_rows()) x.insert(x.end(), r.x.begin(), r.x.end());
  const int64_t n = int64_t(nan_rows().size());
  std::vector<int32_t> arg[2];
  std::vector<float> prob[2];
  for (int b = 0; b < 2; ++b) {
    const Device d = b ? Device::CUDA : Device::CPU;
    OwnedTensor tx = on(d, x), ta(d, Shape{n}, DType::I32), tp(d, Shape{n});
    TS_DISPATCH(d, argmax_max_prob, tx.t.f32(), static_cast<int32_t*>(ta.t.ptr), tp.t.f32(), n, int64_t{70});
    arg[b] = to_host_i32(ta.t);
    prob[b] = to_host_f32(tp.t);
  }
  EXPECT_EQ(arg[1], arg[0]);
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(prob[0][size_t(i)])) EXPECT_TRUE(std::isnan(prob[1][size_t(i)])) << "row " << i;
    else EXPECT_NEAR(prob[1][size_t(i)], prob[0][size_t(i)], 1e-6f) << "row " << i;
  }
}

#if TESSERA_CUDA
// Host-side launch shape (no device needed). The plane kernels step `int k += gridDim.x *
// blockDim.x`: the largest plane accepted must leave room for that last step below 2^31.
TEST(PlaneLaunch, LargestAcceptedPlaneCannotWrapItsIndex) {
  const kernels::cuda::PlaneLaunch l = kernels::cuda::plane_launch(3, kernels::cuda::kMaxPlaneElements, "test");
  EXPECT_LE(kernels::cuda::kMaxPlaneElements + int64_t{l.grid.x} * l.block.x, int64_t{INT32_MAX});
  EXPECT_THROW(kernels::cuda::plane_launch(3, kernels::cuda::kMaxPlaneElements + 1, "test"), std::runtime_error);
  EXPECT_THROW(kernels::cuda::plane_launch(1, int64_t{INT32_MAX}, "test"), std::runtime_error);
}
#endif

// ---- loader: double-buffered uploads on the copy stream ------------------------------------

// While the engine stream still works on batch 0 (a host function sleeps in it, then batch 0
// is copied out), the loader delivers batches 1 and 2; batch 2 goes into batch 0's device
// buffer, so its upload must wait for the engine stream. The copy out must still read batch 0.
TEST(LoaderCuda, DeviceBatchIsNotRewrittenWhileTheEngineStreamUsesIt) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA loader not run: " << reason;
#if TESSERA_CUDA
  data::Dataset d;
  d.name = "synthetic/train";
  d.size = 64, d.channels = 3, d.height = 8, d.width = 8, d.num_classes = 4;
  for (int64_t i = 0; i < d.size * d.image_bytes(); ++i) d.images.push_back(uint8_t((i * 13) % 251));
  for (int64_t i = 0; i < d.size; ++i) d.labels.push_back(int32_t(i % 4));
  d.mean.assign(3, 0.5f);
  d.std.assign(3, 0.25f);
  data::NormalizeTransform norm;
  auto cpu = data::make_byol_loader(d, 8, norm, norm, 9, Device::CPU);
  auto gpu = data::make_byol_loader(d, 8, norm, norm, 9, Device::CUDA);
  std::vector<std::vector<float>> want;
  for (int k = 0; k < 3; ++k) want.push_back(to_host_f32(cpu->next().views[0]));
  const size_t bytes = want[0].size() * sizeof(float);
  float* seen = nullptr;
  ASSERT_EQ(cudaMallocHost(&seen, bytes), cudaSuccess);
  const cudaStream_t stream = kernels::cuda::runtime().stream;
  const data::Batch& b0 = gpu->next();
  const void* b0_ptr = b0.views[0].ptr;
  ASSERT_EQ(cudaLaunchHostFunc(
                stream, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(300)); }, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(seen, b0_ptr, bytes, cudaMemcpyDeviceToHost, stream), cudaSuccess);
  gpu->next();
  const data::Batch& b2 = gpu->next();
  EXPECT_EQ(b2.views[0].ptr, b0_ptr) << "double buffering: batch 2 reuses batch 0's buffer";
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // time for a wrong upload to land
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_TRUE(std::equal(want[0].begin(), want[0].end(), seen)) << "batch 0 was overwritten before its reader ran";
  EXPECT_EQ(to_host_f32(b2.views[0]), want[2]);
  cudaFreeHost(seen);
#endif
}

}  // namespace
}  // namespace tessera
