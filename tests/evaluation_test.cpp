// kNN monitor and linear probe (apps/run/evaluation.h) on generated features whose answer
// is known: hand-built neighbourhoods, separable clusters, labels with no signal, and the
// probe against a plain double-precision reference of itself. Then the features they are
// given (apps/run/features.h): a backbone's eval-mode features in dataset order, and the
// final event and line that name every network's scores.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "apps/run/evaluation.h"
#include "apps/run/features.h"
#include "apps/run/run_directory.h"
#include "engine/check.h"
#include "data/sampler.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "tests/thrown.h"

namespace tessera {
namespace {

LinearProbeOptions probe_options(int epochs, int batch_size, float lr) {
  LinearProbeOptions opt;
  opt.epochs = epochs;
  opt.batch_size = batch_size;
  opt.lr = lr;
  return opt;
}

// A set of rows `x` ((n, dim) row-major, n = the number of labels) with labels `y`.
FeatureSet features(int64_t dim, std::vector<float> x, std::vector<int32_t> y) {
  FeatureSet f;
  f.n = static_cast<int64_t>(y.size());
  f.dim = dim;
  f.x = std::move(x);
  f.y = std::move(y);
  return f;
}

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
  FeatureSet bank = features(2, {1.0f, 0.01f, 0.5f, 0.866f, 0.5f, -0.866f}, {1, 0, 0});
  FeatureSet query = features(2, {3.0f, 0.0f}, {1});  // the length does not matter: rows are normalised
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


TEST(Knn, RejectsMalformedSetsAndOptionsAtTheirBounds) {
  const FeatureSet good = clusters(3, 4, 4, 0.1f, 1, false);
  auto knn = [&](const FeatureSet& train, const FeatureSet& test, KnnOptions opt = {}) {
    return thrown([&] { knn_top1(train, test, 3, opt); });
  };
  EXPECT_EQ(knn(good, good), "");
  FeatureSet empty = good;
  empty.n = 0;
  empty.x.clear();
  empty.y.clear();
  EXPECT_TRUE(has(knn(good, empty), "kNN test features: empty feature set")) << knn(good, empty);
  FeatureSet extra_values = good;  // one value more than n x dim
  extra_values.x.push_back(0.0f);
  EXPECT_TRUE(has(knn(extra_values, good), "values for 12 x 4 features")) << knn(extra_values, good);
  FeatureSet extra_label = good;
  extra_label.y.push_back(0);
  EXPECT_TRUE(has(knn(good, extra_label), "13 labels for 12 rows")) << knn(good, extra_label);
  // Labels live in [0, num_classes): both ends just outside.
  FeatureSet label = good;
  label.y[5] = 3;
  EXPECT_TRUE(has(knn(label, good), "label 3 outside [0, 3)")) << knn(label, good);
  label.y[5] = -1;
  EXPECT_TRUE(has(knn(good, label), "label -1 outside [0, 3)")) << knn(good, label);
  // Neither dims order gets through.
  const FeatureSet wider = clusters(3, 4, 5, 0.1f, 1, false);
  EXPECT_TRUE(has(knn(wider, good), "5 dims, test 4")) << knn(wider, good);
  EXPECT_TRUE(has(knn(good, wider), "4 dims, test 5")) << knn(good, wider);
  EXPECT_TRUE(has(knn(good, good, KnnOptions{0, 0.1f}), "kNN: k 0")) << knn(good, good, KnnOptions{0, 0.1f});
  EXPECT_TRUE(has(knn(good, good, KnnOptions{1, 0.0f}), "temperature 0")) << knn(good, good, KnnOptions{1, 0.0f});
}

TEST(Knn, OnlyDirectionsCount) {
  // WeightedVoteFollowsSimilarity's bank and query, with lengths that would change every vote
  // if rows were not L2-normalised: the two class-0 points 10 times longer (unnormalised
  // similarity 5 each against 1) and a query of length 100 (which at T = 10 would give the
  // close point e^10 against 2 e^5).
  FeatureSet bank = features(2, {1.0f, 0.01f, 5.0f, 8.66f, 5.0f, -8.66f}, {1, 0, 0});
  FeatureSet query = features(2, {100.0f, 0.0f}, {1});
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{3, 0.1f}), 100.0);
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{3, 10.0f}), 0.0);
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 10.0f}), 100.0);
}

TEST(Knn, TiesGoToTheLowerBankIndex) {
  // Rows 0 and 1 are the same direction with different labels: an exact tie for the nearest.
  FeatureSet bank = features(2, {2.0f, 0.0f, 1.0f, 0.0f, 0.0f, 1.0f}, {1, 0, 0});
  FeatureSet query = features(2, {1.0f, 0.0f}, {1});
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 0.1f}), 100.0);
  bank.y = {0, 1, 0};
  query.y = {0};
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 0.1f}), 100.0);
}

TEST(Knn, AZeroRowHasSimilarityZero) {
  // A zero feature row is not normalised to NaN: it sits at similarity 0 to everything, here
  // nearer to the query than the opposite point.
  FeatureSet bank = features(2, {-1.0f, 0.0f, 0.0f, 0.0f}, {0, 1});
  FeatureSet query = features(2, {1.0f, 0.0f}, {1});
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 0.1f}), 100.0);
  // A zero query ties with every bank row, so the lowest index votes alone.
  query.x = {0.0f, 0.0f};
  query.y = {0};
  EXPECT_EQ(knn_top1(bank, query, 2, KnnOptions{1, 0.1f}), 100.0);
}

TEST(Knn, EveryTestRowOfEveryBlockCounts) {
  // 600 queries (blocks of 256, 256 and 88), each a copy of one of two bank directions; the
  // label of every third is wrong on purpose, so the accuracy is exactly 400 / 600 only if
  // each row is scored once against its own label.
  FeatureSet bank = features(2, {1.0f, 0.0f, 0.0f, 1.0f}, {0, 1});
  FeatureSet test;
  test.n = 600;
  test.dim = 2;
  for (int64_t i = 0; i < test.n; ++i) {
    const int32_t c = static_cast<int32_t>((i / 7) % 2);
    test.x.push_back(c == 0 ? 1.0f : 0.0f);
    test.x.push_back(c == 0 ? 0.0f : 1.0f);
    test.y.push_back(i % 3 == 0 ? 1 - c : c);
  }
  EXPECT_DOUBLE_EQ(knn_top1(bank, test, 2, KnnOptions{1, 0.1f}), 100.0 * 400.0 / 600.0);
  // Only the last row wrong: it lies in the partial block.
  for (int64_t i = 0; i < test.n; ++i) test.y[static_cast<size_t>(i)] = static_cast<int32_t>((i / 7) % 2);
  test.y[599] = 1 - test.y[599];
  EXPECT_DOUBLE_EQ(knn_top1(bank, test, 2, KnnOptions{1, 0.1f}), 100.0 * 599.0 / 600.0);
}

TEST(LinearProbe, SeparableClustersAreLearnedDeterministically) {
  const FeatureSet train = clusters(4, 300, 16, 0.4f, 3, false);
  const FeatureSet test = clusters(4, 100, 16, 0.4f, 4, false);
  LinearProbeOptions opt = probe_options(10, 64, 1e-2f);
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
  LinearProbeOptions opt = probe_options(4, 32, 2e-2f);
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

TEST(LinearProbe, RejectsBadInput) {
  const FeatureSet good = clusters(3, 4, 4, 0.1f, 1, false);
  auto probe = [&](const FeatureSet& train, const FeatureSet& test, LinearProbeOptions opt) {
    return thrown([&] { linear_probe(train, test, 3, opt); });
  };
  LinearProbeOptions opt;
  opt.epochs = 1;
  opt.batch_size = 4;
  EXPECT_EQ(probe(good, good, opt), "");
  const FeatureSet wider = clusters(3, 4, 5, 0.1f, 1, false);
  EXPECT_TRUE(has(probe(wider, good, opt), "5 dims, test 4")) << probe(wider, good, opt);
  EXPECT_TRUE(has(probe(good, wider, opt), "4 dims, test 5")) << probe(good, wider, opt);
  FeatureSet label = good;
  label.y[0] = 3;
  EXPECT_TRUE(has(probe(good, label, opt), "linear probe test features: label 3")) << probe(good, label, opt);
  LinearProbeOptions no_epochs = opt;
  no_epochs.epochs = 0;
  EXPECT_TRUE(has(probe(good, good, no_epochs), "epochs 0")) << probe(good, good, no_epochs);
  LinearProbeOptions no_batch = opt;
  no_batch.batch_size = 0;
  EXPECT_TRUE(has(probe(good, good, no_batch), "batch 0")) << probe(good, good, no_batch);
}

TEST(LinearProbe, EachSplitIsScoredOnItsOwnLabelsAfterTheSameStandardisation) {
  // Features far from the origin and scaled up: only standardised with the train split's
  // statistics do they match the weights the probe learned.
  FeatureSet train = clusters(4, 100, 8, 0.3f, 3, false);
  FeatureSet test = clusters(4, 50, 8, 0.3f, 4, false);
  for (float& v : train.x) v = 200.0f + 50.0f * v;
  for (float& v : test.x) v = 200.0f + 50.0f * v;
  LinearProbeOptions opt = probe_options(5, 64, 1e-2f);
  const LinearProbeResult same = linear_probe(train, train, 4, opt);
  EXPECT_GT(same.train_top1, 95.0);
  EXPECT_EQ(same.test_top1, same.train_top1);  // the same rows, scored the same way
  EXPECT_GT(linear_probe(train, test, 4, opt).test_top1, 95.0);
  // Test labels rotated by one class: every test prediction the probe gets right for the
  // clusters is now wrong, while the train accuracy must not move.
  for (int32_t& y : test.y) y = (y + 1) % 4;
  const LinearProbeResult rotated = linear_probe(train, test, 4, opt);
  EXPECT_GT(rotated.train_top1, 95.0);
  EXPECT_LT(rotated.test_top1, 5.0);
}

TEST(LinearProbe, TheBiasTakesPartInTheScore) {
  // One feature: 160 class-0 rows in [0, 1), 40 class-1 rows in [2, 3). The mean is 0.9,
  // inside class 0, so a classifier with no bias (boundary at the standardised origin) gets
  // the class-0 rows above 0.9 wrong; with the bias every row is separable.
  FeatureSet f;
  f.n = 200;
  f.dim = 1;
  for (int64_t i = 0; i < 160; ++i) {
    f.x.push_back(static_cast<float>(i) / 160.0f);
    f.y.push_back(0);
  }
  for (int64_t i = 0; i < 40; ++i) {
    f.x.push_back(2.0f + static_cast<float>(i) / 40.0f);
    f.y.push_back(1);
  }
  LinearProbeOptions opt = probe_options(30, 32, 5e-2f);
  const LinearProbeResult r = linear_probe(f, f, 2, opt);
  EXPECT_EQ(r.train_top1, 100.0);
  EXPECT_EQ(r.test_top1, 100.0);
}

// ---- features of a backbone (apps/run/features.h) -------------------------------------------

// n grey 8x8 images: class c (of 4) is a bright 3x3 square in one corner, on Philox noise.
data::Dataset squares(int64_t n, uint64_t seed) {
  data::Dataset d;
  d.name = "squares";
  d.size = n;
  d.channels = 1;
  d.height = d.width = 8;
  d.num_classes = 4;
  d.mean = {0.3f};
  d.std = {0.25f};
  d.class_names = {"0", "1", "2", "3"};
  kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, 11), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>((i * 7 + i / 4) % 4);
    d.labels.push_back(c);
    const int top = c / 2 * 5, left = c % 2 * 5;
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const bool in = y >= top && y < top + 3 && x >= left && x < left + 3;
        d.images.push_back(static_cast<uint8_t>((in ? 150 : 0) + rng.next_u32() % 100));
      }
  }
  return d;
}

ModelSpec tiny_backbone(int width) {
  ModelSpec s;
  s.arch = "resnet18";
  s.stem = "cifar";
  s.in_channels = 1;
  s.width = width;
  return s;
}

TEST(Features, FirstImagesIsAPrefixWithTheSameDescription) {
  const data::Dataset d = squares(5, 1);
  const data::Dataset three = first_images(d, 3);
  EXPECT_EQ(three.size, 3);
  EXPECT_EQ(three.images, std::vector<uint8_t>(d.images.begin(), d.images.begin() + 3 * 64));
  EXPECT_EQ(three.labels, std::vector<int32_t>(d.labels.begin(), d.labels.begin() + 3));
  EXPECT_EQ(three.name, d.name);
  EXPECT_EQ(three.channels, 1);
  EXPECT_EQ(three.height, 8);
  EXPECT_EQ(three.width, 8);
  EXPECT_EQ(three.num_classes, 4);
  EXPECT_EQ(three.mean, d.mean);
  EXPECT_EQ(three.std, d.std);
  EXPECT_EQ(three.class_names, d.class_names);
  // No limit (0 or negative) and a limit of the size or more: all of it.
  for (int64_t limit : {0, -1, 5, 6}) {
    const data::Dataset all = first_images(d, limit);
    EXPECT_EQ(all.size, 5) << limit;
    EXPECT_EQ(all.images, d.images) << limit;
    EXPECT_EQ(all.labels, d.labels) << limit;
  }
  data::Dataset unlabeled = d;
  unlabeled.labels.clear();
  EXPECT_FALSE(first_images(unlabeled, 2).labeled());
}

// The features of every image, in dataset order, from a plain eval-mode forward of the
// normalised pixels written out here; in batches of 3, so the last of 10 holds one image.
TEST(Features, ExtractedBatchByBatchInEvalModeAndInOrder) {
  const data::Dataset d = squares(10, 2);
  auto m = make_model(tiny_backbone(4), Device::CPU);
  m->init(3);
  const std::vector<float> buffers_before = to_host_f32(m->buffers().all());
  Workspace ws(Device::CPU);
  const FeatureSet f = extract_features(*m, d, 3, ws);
  EXPECT_EQ(f.n, 10);
  EXPECT_EQ(f.dim, m->feature_dim());
  EXPECT_EQ(f.y, d.labels);
  ASSERT_EQ(f.x.size(), static_cast<size_t>(10 * f.dim));
  EXPECT_EQ(to_host_f32(m->buffers().all()), buffers_before);  // no running statistics moved

  std::vector<float> pixels;
  for (uint8_t p : d.images) pixels.push_back((static_cast<float>(p) / 255.0f - 0.3f) / 0.25f);
  ws.reset();
  Graph g(ws);
  NoGradScope no_grad(g);
  const Tensor x = ws.alloc(Shape{10, 1, 8, 8});
  from_host(x, pixels);
  const std::vector<float> expected = to_host_f32(m->features(g, g.input(x, "images"), false)->value);
  ASSERT_EQ(expected.size(), f.x.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(f.x[i], expected[i], 1e-4f * std::max(1.0f, std::fabs(expected[i]))) << "image " << i / f.dim;

  data::Dataset unlabeled = d;
  unlabeled.labels.clear();
  EXPECT_TRUE(has(thrown([&] { extract_features(*m, unlabeled, 3, ws); }), "squares: evaluation needs labels"));
}

// A backbone with no parameters whose features are its input, flattened: what
// extract_features stores is then the normalised pixels themselves. `dim` is the feature_dim
// it claims, right (64 for 8x8 grey) or not.
class FlattenBackbone : public Model {
 public:
  explicit FlattenBackbone(int dim) : Model(ModelSpec{}) { set_feature_dim(dim); }
  Var* features(Graph& g, Var* x, bool) override { return ops::flatten(g, x); }
};

TEST(Features, AreTheNormalisedPixelsForAnIdentityBackbone) {
  const data::Dataset d = squares(7, 3);
  FlattenBackbone identity(64);
  Workspace ws(Device::CPU);
  const FeatureSet f = extract_features(identity, d, 2, ws);
  ASSERT_EQ(f.x.size(), d.images.size());
  for (size_t i = 0; i < f.x.size(); ++i)
    ASSERT_NEAR(f.x[i], (d.images[i] / 255.0 - 0.3) / 0.25, 1e-5) << "pixel " << i;
  // A backbone whose output disagrees with its feature_dim is an Error, not an overrun.
  FlattenBackbone liar(32);
  const std::string e = thrown([&] { extract_features(liar, d, 2, ws); });
  EXPECT_TRUE(has(e, "features of squares: expected 2 x 32, found (2, 64)")) << e;
}

// The workspace is reset for every batch: its peak is one batch's, whatever the number of
// batches (2 or 5 here).
TEST(Features, TheWorkspaceHoldsOneBatchAtATime) {
  auto m = make_model(tiny_backbone(4), Device::CPU);
  Workspace two_batches(Device::CPU), five_batches(Device::CPU);
  extract_features(*m, squares(4, 1), 2, two_batches);
  extract_features(*m, squares(10, 1), 2, five_batches);
  EXPECT_GT(two_batches.high_water(), 0u);
  EXPECT_EQ(five_batches.high_water(), two_batches.high_water());
}

TEST(Features, EvaluateBackboneIsKnnAndProbeOfTheFeatures) {
  const data::Dataset train = squares(24, 4), test = squares(12, 5);
  auto m = make_model(tiny_backbone(4), Device::CPU);
  m->init(6);
  LinearProbeOptions probe;
  probe.epochs = 3;
  probe.batch_size = 8;
  Workspace ws(Device::CPU);
  const FeatureSet ftr = extract_features(*m, train, 5, ws), fte = extract_features(*m, test, 5, ws);
  const double knn = knn_top1(ftr, fte, 4);
  const double linear = linear_probe(ftr, fte, 4, probe).test_top1;
  const BackboneScores both = evaluate_backbone(*m, train, test, 5, true, probe, ws);
  EXPECT_EQ(both.knn_top1, knn);
  EXPECT_EQ(both.linear_top1, linear);
  const BackboneScores knn_only = evaluate_backbone(*m, train, test, 5, false, probe, ws);
  EXPECT_EQ(knn_only.knn_top1, knn);
  EXPECT_EQ(knn_only.linear_top1, 0.0);
}

// The final event and line name each network's scores: teacher and student of different
// widths and seeds, and the baseline a fresh backbone of the student's spec initialised with
// the baseline seed. The seeds are picked so that the six scores all differ (checked first).
TEST(Features, FinalScoresNameEveryNetwork) {
  const data::Dataset train = squares(24, 4), test = squares(12, 5);
  LinearProbeOptions probe;
  probe.epochs = 3;
  probe.batch_size = 8;
  auto teacher = make_model(tiny_backbone(4), Device::CPU), student = make_model(tiny_backbone(8), Device::CPU);
  teacher->init(3);
  student->init(4);
  auto fresh = make_model(tiny_backbone(8), Device::CPU);
  fresh->init(5);
  Workspace ws(Device::CPU);
  const BackboneScores t = evaluate_backbone(*teacher, train, test, 5, true, probe, ws);
  const BackboneScores s = evaluate_backbone(*student, train, test, 5, true, probe, ws);
  const BackboneScores b = evaluate_backbone(*fresh, train, test, 5, true, probe, ws);
  std::vector<double> six{t.knn_top1, t.linear_top1, s.knn_top1, s.linear_top1, b.knn_top1, b.linear_top1};
  std::sort(six.begin(), six.end());
  ASSERT_EQ(std::adjacent_find(six.begin(), six.end()), six.end()) << "two scores agree: pick other seeds";

  const FinalScores plain = final_scores("prog", *teacher, "T", *student, "S", false, 5, train, test, 5, probe);
  EXPECT_EQ(plain.event, (nlohmann::json{{"knn_top1_teacher", t.knn_top1},
                                         {"linear_top1_teacher", t.linear_top1},
                                         {"knn_top1_student", s.knn_top1},
                                         {"linear_top1_student", s.linear_top1}}));
  const std::string line = "prog: linear probe top-1: T " + fixed2(t.linear_top1) + "% (kNN " + fixed2(t.knn_top1) +
                           "%), S " + fixed2(s.linear_top1) + "%";
  EXPECT_EQ(plain.line, line);

  const FinalScores with_baseline = final_scores("prog", *teacher, "T", *student, "S", true, 5, train, test, 5, probe);
  EXPECT_EQ(with_baseline.event["knn_top1_baseline"], b.knn_top1);
  EXPECT_EQ(with_baseline.event["linear_top1_baseline"], b.linear_top1);
  EXPECT_EQ(with_baseline.event["linear_top1_student"], s.linear_top1);
  const double gain = t.linear_top1 - b.linear_top1;
  EXPECT_EQ(with_baseline.line, line + "; random-init baseline " + fixed2(b.linear_top1) + "% (" +
                                    (gain >= 0 ? "+" : "") + fixed2(gain) + " points)");
  // A teacher that is the baseline's backbone itself: a gain of exactly 0 is written "+0.00".
  const FinalScores even = final_scores("prog", *fresh, "T", *student, "S", true, 5, train, test, 5, probe);
  EXPECT_EQ(even.event["linear_top1_baseline"], even.event["linear_top1_teacher"]);
  EXPECT_NE(even.line.find("% (+0.00 points)"), std::string::npos) << even.line;
}

}  // namespace
}  // namespace tessera
