// kNN monitor and linear probe (apps/run/evaluation.h) on generated features whose answer
// is known: hand-built neighbourhoods, separable clusters, and labels with no signal.
#include <gtest/gtest.h>

#include <cmath>

#include "apps/run/evaluation.h"
#include "engine/check.h"
#include "kernels/common/philox.h"

namespace tessera {
namespace {

// n points per class around class centres on the axes, with Gaussian-ish noise of `spread`.
FeatureSet clusters(int classes, int64_t per_class, int64_t dim, float spread, uint64_t seed, bool shuffle_labels) {
  FeatureSet f;
  f.n = classes * per_class;
  f.dim = dim;
  kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, 7), 0);
  for (int c = 0; c < classes; ++c) {
    for (int64_t i = 0; i < per_class; ++i) {
      for (int64_t j = 0; j < dim; ++j) {
        // Sum of 4 uniforms: roughly normal, mean 0, sd ~0.58 * spread.
        float noise = 0;
        for (int u = 0; u < 4; ++u) noise += rng.uniform() - 0.5f;
        f.x.push_back((j == c % dim ? 1.0f : 0.0f) + spread * noise);
      }
      f.y.push_back(shuffle_labels ? static_cast<int32_t>(rng.next_u32() % static_cast<uint32_t>(classes)) : c);
    }
  }
  return f;
}

TEST(Knn, WeightedVoteFollowsSimilarity) {
  // Query (1, 0). Bank: one class-1 point at angle ~0 and two class-0 points at ~60 degrees.
  // With k = 3 and T = 0.1 the close point's weight e^10 beats 2 e^5; with T = 10 the two
  // far points outvote it.
  FeatureSet bank;
  bank.n = 3;
  bank.dim = 2;
  bank.x = {1.0f, 0.01f, 0.5f, 0.866f, 0.5f, -0.866f};
  bank.y = {1, 0, 0};
  FeatureSet query;
  query.n = 1;
  query.dim = 2;
  query.x = {3.0f, 0.0f};  // the length does not matter: rows are normalised
  query.y = {1};
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{3, 0.1f}), 100.0);
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{3, 10.0f}), 0.0);
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 10.0f}), 100.0);  // only the nearest votes
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{200, 0.1f}), 100.0);  // k larger than the bank
}

TEST(Knn, SeparatedClustersAndNoise) {
  const FeatureSet train = clusters(5, 200, 8, 0.3f, 1, false);
  // 600 test points: three blocks of knn_top1's 256 rows, each with labels of its own.
  const FeatureSet test = clusters(5, 120, 8, 0.3f, 2, false);
  EXPECT_GT(knn_top1(train, test, 5), 97.0);
  const FeatureSet noise_train = clusters(5, 200, 8, 0.3f, 1, true);
  const FeatureSet noise_test = clusters(5, 50, 8, 0.3f, 2, true);
  const double chance = knn_top1(noise_train, noise_test, 5);
  EXPECT_LT(chance, 35.0);  // 20% expected; 250 test points, so 35 is > 4 standard deviations
}

TEST(Knn, RejectsBadInput) {
  FeatureSet a = clusters(3, 4, 4, 0.1f, 1, false);
  FeatureSet b = clusters(3, 4, 5, 0.1f, 1, false);
  EXPECT_THROW(knn_top1(a, b, 3), Error);  // dims differ
  a.y[0] = 7;
  EXPECT_THROW(knn_top1(a, a, 3), Error);  // label out of range
}

TEST(LinearProbe, SeparableClustersAreLearnedDeterministically) {
  const FeatureSet train = clusters(4, 300, 16, 0.4f, 3, false);
  const FeatureSet test = clusters(4, 100, 16, 0.4f, 4, false);
  LinearProbeOptions opt;
  opt.epochs = 10;
  opt.batch_size = 64;
  opt.lr = 1e-2f;
  const LinearProbeResult r = linear_probe(train, test, 4, opt);
  EXPECT_GT(r.test_top1, 95.0);
  EXPECT_GT(r.train_top1, 95.0);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  const LinearProbeResult again = linear_probe(train, test, 4, opt);
  EXPECT_EQ(r.test_top1, again.test_top1);
  EXPECT_EQ(r.final_loss, again.final_loss);
}

TEST(LinearProbe, NoSignalStaysNearChance) {
  const FeatureSet train = clusters(4, 300, 16, 0.6f, 3, true);
  const FeatureSet test = clusters(4, 100, 16, 0.6f, 4, true);
  const LinearProbeResult r = linear_probe(train, test, 4, LinearProbeOptions{});
  EXPECT_LT(r.test_top1, 40.0);  // 25% expected; 400 test points
}

}  // namespace
}  // namespace tessera
