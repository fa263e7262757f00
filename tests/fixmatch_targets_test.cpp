// kernels/fixmatch_targets.h: the CPU kernel against a plain reference written out row by row
// (the host loop fixmatch.cpp used before the kernel existed), its edge cases, and the CUDA
// twin against the CPU, bit for bit, where a GPU exists.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/dispatch.h"
#include "engine/tensor.h"
#include "kernels/common/philox.h"
#include "kernels/fixmatch_targets.h"
#include "tests/op_case.h"

namespace tessera {
namespace {

struct Inputs {
  int64_t b = 0, u = 0;
  float threshold = 0.95f, lambda_u = 1.0f;
  std::vector<int32_t> labeled, pseudo, truth;  // (b), (u), (u)
  std::vector<float> confidence;                 // (u)
};

struct Outputs {
  std::vector<int32_t> labels, counts;
  std::vector<float> weight, sup, unsup;
  bool operator==(const Outputs& o) const {
    return labels == o.labels && counts == o.counts && weight == o.weight && sup == o.sup && unsup == o.unsup;
  }
};

// Labels in [0, 10), confidences in (0.1, 1] from Philox, every third one exactly the threshold
// (when the threshold is a probability).
Inputs random_inputs(int64_t b, int64_t u, float threshold, float lambda_u, uint64_t seed) {
  Inputs in;
  in.b = b;
  in.u = u;
  in.threshold = threshold;
  in.lambda_u = lambda_u;
  uint64_t i = 0;
  auto draw = [&] { return kernels::philox_uniform(seed, kernels::kStreamTest, 0, i++); };  // (0, 1]
  auto label = [&] { return static_cast<int32_t>(draw() * 9.99f); };
  for (int64_t r = 0; r < b; ++r) in.labeled.push_back(label());
  for (int64_t r = 0; r < u; ++r) {
    in.pseudo.push_back(label());
    in.truth.push_back(draw() < 0.5f ? in.pseudo.back() : label());
    in.confidence.push_back(r % 3 == 0 && threshold <= 1.0f ? threshold : 0.1f + 0.9f * draw());
  }
  return in;
}

// The reference: the per-step host loop fixmatch.cpp ran before the kernel, with the counts
// starting from `counts0` (the kernel adds to them).
Outputs reference(const Inputs& in, std::vector<int32_t> counts0) {
  const int64_t n = in.b + 2 * in.u;
  Outputs o;
  o.labels.assign(static_cast<size_t>(n), 0);
  o.sup.assign(static_cast<size_t>(n), 0.0f);
  o.unsup.assign(static_cast<size_t>(n), 0.0f);
  o.weight.assign(static_cast<size_t>(n), 0.0f);
  o.counts = counts0;
  for (int64_t i = 0; i < in.b; ++i) {
    o.labels[static_cast<size_t>(i)] = in.labeled[static_cast<size_t>(i)];
    o.sup[static_cast<size_t>(i)] = static_cast<float>(n) / static_cast<float>(in.b);
  }
  for (int64_t i = 0; i < in.u; ++i) {
    const size_t r = static_cast<size_t>(in.b + in.u + i);
    const bool keep = in.confidence[static_cast<size_t>(i)] >= in.threshold;
    o.labels[r] = in.pseudo[static_cast<size_t>(i)];
    o.unsup[r] = keep ? static_cast<float>(n) / static_cast<float>(in.u) : 0.0f;
    o.counts[0] += keep;
    o.counts[1] += in.pseudo[static_cast<size_t>(i)] == in.truth[static_cast<size_t>(i)];
  }
  for (size_t i = 0; i < o.weight.size(); ++i) o.weight[i] = o.sup[i] + in.lambda_u * o.unsup[i];
  return o;
}

// The kernel on `device`, through the engine's dispatch, with the counts starting at counts0.
Outputs run_kernel(const Inputs& in, Device device, const std::vector<int32_t>& counts0) {
  const int64_t n = in.b + 2 * in.u;
  OwnedTensor labeled(device, Shape{in.b}, DType::I32), labels(device, Shape{n}, DType::I32),
      counts(device, Shape{2}, DType::I32), weight(device, Shape{n}), sup(device, Shape{n}), unsup(device, Shape{n});
  from_host(labeled, in.labeled);
  from_host(counts, counts0);
  // Poison the outputs, so a row the kernel forgets shows.
  fill_value(weight, -7.0f);
  fill_value(sup, -7.0f);
  fill_value(unsup, -7.0f);
  from_host(labels, std::vector<int32_t>(static_cast<size_t>(n), -7));
  OwnedTensor pseudo, confidence, truth;
  if (in.u > 0) {
    pseudo = OwnedTensor(device, Shape{in.u}, DType::I32);
    confidence = OwnedTensor(device, Shape{in.u});
    truth = OwnedTensor(device, Shape{in.u}, DType::I32);
    from_host(pseudo, in.pseudo);
    from_host(confidence, in.confidence);
    from_host(truth, in.truth);
  }
  TS_DISPATCH(device, fixmatch_targets, labeled.t.i32(), in.u > 0 ? pseudo.t.i32() : nullptr,
              in.u > 0 ? confidence.t.f32() : nullptr, in.u > 0 ? truth.t.i32() : nullptr, in.b, in.u, in.threshold,
              in.lambda_u, labels.t.i32(), weight.t.f32(), sup.t.f32(), unsup.t.f32(), counts.t.i32());
  return Outputs{to_host_i32(labels), to_host_i32(counts), to_host_f32(weight), to_host_f32(sup),
                 to_host_f32(unsup)};
}

TEST(FixMatchTargets, CpuMatchesReference) {
  const Inputs in = random_inputs(5, 9, 0.95f, 1.0f, 1);
  const std::vector<int32_t> counts0 = {3, 4};  // the kernel adds to what is there
  const Outputs want = reference(in, counts0), got = run_kernel(in, Device::CPU, counts0);
  EXPECT_TRUE(got == want);
  // The weak rows: label 0, no weight.
  for (int64_t r = in.b; r < in.b + in.u; ++r) {
    EXPECT_EQ(got.labels[static_cast<size_t>(r)], 0);
    EXPECT_EQ(got.weight[static_cast<size_t>(r)], 0.0f);
  }
  EXPECT_EQ(got.sup[0], 23.0f / 5.0f);
}

TEST(FixMatchTargets, ConfidenceAtThresholdIsKept) {
  Inputs in = random_inputs(2, 4, 0.95f, 1.0f, 2);
  in.confidence = {0.95f, std::nextafter(0.95f, 0.0f), 0.95f, 1.0f};
  const Outputs got = run_kernel(in, Device::CPU, {0, 0});
  EXPECT_EQ(got.counts[0], 3);
  const float kept = 10.0f / 4.0f;
  EXPECT_EQ(got.unsup, (std::vector<float>{0, 0, 0, 0, 0, 0, kept, 0, kept, kept}));
  for (int64_t r = 6; r < 10; ++r) EXPECT_EQ(got.weight[static_cast<size_t>(r)], got.unsup[static_cast<size_t>(r)]);
  EXPECT_TRUE(got == reference(in, {0, 0}));
}

TEST(FixMatchTargets, LambdaZeroKeepsTheMaskButNoUnlabeledWeight) {
  const Inputs in = random_inputs(4, 6, 0.5f, 0.0f, 3);
  const Outputs got = run_kernel(in, Device::CPU, {0, 0});
  EXPECT_TRUE(got == reference(in, {0, 0}));
  for (int64_t r = in.b; r < in.b + 2 * in.u; ++r) EXPECT_EQ(got.weight[static_cast<size_t>(r)], 0.0f);
  EXPECT_GT(got.counts[0], 0);  // the mask and its unsup weights are still reported for the log
}

TEST(FixMatchTargets, AllKeptAndNoneKept) {
  for (const float threshold : {0.0f, 2.0f}) {
    const Inputs in = random_inputs(3, 8, threshold, 1.5f, 4);
    const Outputs got = run_kernel(in, Device::CPU, {0, 0});
    EXPECT_TRUE(got == reference(in, {0, 0})) << "threshold " << threshold;
    EXPECT_EQ(got.counts[0], threshold == 0.0f ? 8 : 0);
    const float strong = threshold == 0.0f ? 1.5f * (19.0f / 8.0f) : 0.0f;
    for (int64_t r = in.b + in.u; r < in.b + 2 * in.u; ++r) EXPECT_EQ(got.weight[static_cast<size_t>(r)], strong);
  }
}

TEST(FixMatchTargets, NoUnlabeledRows) {  // --lambda-u 0: only the labeled batch exists
  const Inputs in = random_inputs(6, 0, 0.95f, 0.0f, 5);
  const Outputs got = run_kernel(in, Device::CPU, {2, 1});
  EXPECT_TRUE(got == reference(in, {2, 1}));
  EXPECT_EQ(got.weight, std::vector<float>(6, 1.0f));
  EXPECT_EQ(got.counts, (std::vector<int32_t>{2, 1}));
}

// Rows are independent and the counts integer sums, so the twins agree exactly; sizes span one
// block, several blocks and a batch with no unlabeled rows.
TEST(FixMatchTargetsCuda, MatchesCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA vs CPU fixmatch_targets not run: " << reason;
  struct Case {
    int64_t b, u;
    float threshold, lambda_u;
  };
  for (const Case& c : {Case{64, 448, 0.95f, 1.0f}, Case{7, 5000, 0.6f, 0.5f}, Case{3, 8, 0.0f, 1.0f},
                        Case{3, 8, 2.0f, 1.0f}, Case{5, 9, 0.95f, 0.0f}, Case{16, 0, 0.95f, 0.0f}}) {
    const Inputs in = random_inputs(c.b, c.u, c.threshold, c.lambda_u, 6);
    const Outputs cpu = run_kernel(in, Device::CPU, {1, 2}), gpu = run_kernel(in, Device::CUDA, {1, 2});
    EXPECT_TRUE(cpu == gpu) << "b " << c.b << " u " << c.u << " threshold " << c.threshold;
    EXPECT_TRUE(cpu == reference(in, {1, 2}));
  }
}

}  // namespace
}  // namespace tessera
