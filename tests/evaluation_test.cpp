// kNN monitor and linear probe (apps/run/evaluation.h) on generated features whose answer
// is known: hand-built neighbourhoods, separable clusters, labels with no signal, and the
// probe against a plain double-precision reference of itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "apps/run/evaluation.h"
#include "engine/check.h"
#include "data/sampler.h"
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

// The probe written out plainly in double precision: the train split's standardisation,
// softmax regression in batches of the probe's shuffled order, the mean cross-entropy's
// gradient plus L2 on the weight, Adam with the cosine learning rate. Returns the last epoch's
// mean loss, the probe's final_loss.
double reference_probe_loss(const FeatureSet& f, int classes, const LinearProbeOptions& opt) {
  const int64_t n = f.n, d = f.dim;
  std::vector<double> x(f.x.begin(), f.x.end());
  for (int64_t j = 0; j < d; ++j) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += x[i * d + j] / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) var += (x[i * d + j] - mean) * (x[i * d + j] - mean) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) x[i * d + j] = (x[i * d + j] - mean) / std::sqrt(var + 1e-6);
  }
  const size_t np = static_cast<size_t>(classes * (d + 1));  // w (classes, d), then b (classes)
  std::vector<double> p(np, 0.0), m(np, 0.0), v(np, 0.0);
  const int64_t bs = std::min<int64_t>(opt.batch_size, n), total = (n + bs - 1) / bs * opt.epochs;
  int64_t step = 0;
  double loss = 0;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    const std::vector<int64_t> order =
        data::shuffled_order(opt.seed, data::sampler_step(data::SamplerPurpose::LinearProbe, epoch), n);
    loss = 0;
    for (int64_t s0 = 0; s0 < n; s0 += bs, ++step) {
      const int64_t rows = std::min(bs, n - s0);
      std::vector<double> g(np, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = order[static_cast<size_t>(s0 + r)];
        std::vector<double> z(static_cast<size_t>(classes));
        for (int k = 0; k < classes; ++k) {
          z[k] = p[classes * d + k];
          for (int64_t j = 0; j < d; ++j) z[k] += p[k * d + j] * x[i * d + j];
        }
        double total_exp = 0;
        for (int k = 0; k < classes; ++k) total_exp += std::exp(z[k]);
        loss += std::log(total_exp) - z[f.y[i]];
        for (int k = 0; k < classes; ++k) {
          const double dz = (std::exp(z[k]) / total_exp - (k == f.y[i] ? 1.0 : 0.0)) / static_cast<double>(rows);
          for (int64_t j = 0; j < d; ++j) g[k * d + j] += dz * x[i * d + j];
          g[classes * d + k] += dz;
        }
      }
      for (size_t q = 0; q < static_cast<size_t>(classes * d); ++q) g[q] += opt.weight_decay * p[q];
      const double lr = opt.lr * 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
      const double t = static_cast<double>(step + 1);
      for (size_t q = 0; q < np; ++q) {
        m[q] = 0.9 * m[q] + 0.1 * g[q];
        v[q] = 0.999 * v[q] + 0.001 * g[q] * g[q];
        p[q] -= lr * (m[q] / (1 - std::pow(0.9, t))) / (std::sqrt(v[q] / (1 - std::pow(0.999, t))) + 1e-8);
      }
    }
  }
  return loss / static_cast<double>(n);
}

// Against the plain reference, with a last batch of 4 rows out of 32 (whose gradient is the
// mean over its own rows) and labels that are not separable, so the loss still moves.
TEST(LinearProbe, FollowsTheWrittenOutReference) {
  const FeatureSet train = clusters(3, 50, 5, 1.0f, 5, false);  // n = 150: batches of 32, last 22
  LinearProbeOptions opt;
  opt.epochs = 4;
  opt.batch_size = 32;
  opt.lr = 2e-2f;
  opt.weight_decay = 1e-2f;
  opt.seed = 9;
  const double expected = reference_probe_loss(train, 3, opt);
  const LinearProbeResult r = linear_probe(train, train, 3, opt);
  EXPECT_NEAR(r.final_loss, expected, 1e-5 * expected);
  FeatureSet ragged = train;  // n = 132: four batches of 32 and one of 4
  ragged.n = 132;
  ragged.x.resize(static_cast<size_t>(132 * 5));
  ragged.y.resize(132);
  const double expected_ragged = reference_probe_loss(ragged, 3, opt);
  EXPECT_NEAR(linear_probe(ragged, ragged, 3, opt).final_loss, expected_ragged, 1e-5 * expected_ragged);
}

TEST(LinearProbe, NoSignalStaysNearChance) {
  const FeatureSet train = clusters(4, 300, 16, 0.6f, 3, true);
  const FeatureSet test = clusters(4, 100, 16, 0.6f, 4, true);
  const LinearProbeResult r = linear_probe(train, test, 4, LinearProbeOptions{});
  EXPECT_LT(r.test_top1, 40.0);  // 25% expected; 400 test points
}

}  // namespace
}  // namespace tessera
