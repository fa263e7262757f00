#include "apps/run/evaluation.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/sampler.h"
#include "engine/check.h"

namespace tessera {

namespace {

void check_features(const char* what, const FeatureSet& f, int num_classes) {
  TS_CHECK(f.n > 0 && f.dim > 0, what, ": empty feature set (", f.n, " x ", f.dim, ")");
  TS_CHECK(static_cast<int64_t>(f.x.size()) == f.n * f.dim, what, ": ", f.x.size(),
           " values for ", f.n, " x ", f.dim, " features");
  TS_CHECK(static_cast<int64_t>(f.y.size()) == f.n, what, ": ", f.y.size(), " labels for ", f.n, " rows");
  for (int32_t y : f.y)
    TS_CHECK(y >= 0 && y < num_classes, what, ": label ", y, " outside [0, ", num_classes, ")");
}

std::vector<float> l2_normalized(const FeatureSet& f) {
  std::vector<float> out(f.x);
  for (int64_t i = 0; i < f.n; ++i) {
    float* row = out.data() + i * f.dim;
    double ss = 0;
    for (int64_t j = 0; j < f.dim; ++j) ss += static_cast<double>(row[j]) * row[j];
    const float inv = 1.0f / static_cast<float>(std::max(std::sqrt(ss), 1e-12));
    for (int64_t j = 0; j < f.dim; ++j) row[j] *= inv;
  }
  return out;
}

}  // namespace

double knn_top1(const FeatureSet& train, const FeatureSet& test, int num_classes, const KnnOptions& opt) {
  check_features("kNN train features", train, num_classes);
  check_features("kNN test features", test, num_classes);
  TS_CHECK(train.dim == test.dim, "kNN: train features have ", train.dim, " dims, test ", test.dim);
  TS_CHECK(opt.k >= 1 && opt.temperature > 0, "kNN: k ", opt.k, " and temperature ", opt.temperature);
  const std::vector<float> bank = l2_normalized(train);
  const std::vector<float> queries = l2_normalized(test);
  const int64_t n = train.n, d = train.dim;
  const int64_t k = std::min<int64_t>(opt.k, n);
  constexpr int64_t kBlock = 256;  // test rows per sgemm: 256 x n floats of similarities
  std::vector<float> sim(static_cast<size_t>(kBlock * n));
  int64_t correct = 0;
  for (int64_t b0 = 0; b0 < test.n; b0 += kBlock) {
    const int64_t rows = std::min(kBlock, test.n - b0);
    // sim (rows, n) = queries[b0 : b0 + rows] (rows, d) . bank^T (d, n)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(n),
                static_cast<int>(d), 1.0f, queries.data() + b0 * d, static_cast<int>(d), bank.data(),
                static_cast<int>(d), 0.0f, sim.data(), static_cast<int>(n));
#pragma omp parallel reduction(+ : correct)
    {
      std::vector<int64_t> order(static_cast<size_t>(n));
      std::vector<double> votes(static_cast<size_t>(num_classes));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float* s = sim.data() + r * n;
        std::iota(order.begin(), order.end(), int64_t{0});
        // The k most similar; ties go to the lower index, so the vote is deterministic.
        auto closer = [s](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
        std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), closer);
        std::fill(votes.begin(), votes.end(), 0.0);
        for (int64_t i = 0; i < k; ++i) {
          const int64_t j = order[static_cast<size_t>(i)];
          votes[static_cast<size_t>(train.y[static_cast<size_t>(j)])] += std::exp(s[j] / opt.temperature);
        }
        const int32_t predicted = static_cast<int32_t>(std::max_element(votes.begin(), votes.end()) - votes.begin());
        if (predicted == test.y[static_cast<size_t>(b0 + r)]) ++correct;
      }
    }
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(test.n);
}

namespace {

// Row-wise softmax in place; returns the summed cross-entropy against `labels`.
double softmax_rows(float* logits, int64_t rows, int classes, const int32_t* labels) {
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) {
    float* l = logits + r * classes;
    const float mx = *std::max_element(l, l + classes);
    double z = 0;
    for (int c = 0; c < classes; ++c) z += std::exp(static_cast<double>(l[c] - mx));
    loss += std::log(z) - (l[labels[r]] - mx);
    for (int c = 0; c < classes; ++c) l[c] = static_cast<float>(std::exp(static_cast<double>(l[c] - mx)) / z);
  }
  return loss;
}

double accuracy(const std::vector<float>& x, const std::vector<int32_t>& y, int64_t n, int64_t d,
                const std::vector<float>& w, const std::vector<float>& b, int classes) {
  std::vector<float> logits(static_cast<size_t>(n * classes));
  for (int64_t i = 0; i < n; ++i)
    std::copy(b.begin(), b.end(), logits.begin() + i * classes);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), classes, static_cast<int>(d), 1.0f,
              x.data(), static_cast<int>(d), w.data(), static_cast<int>(d), 1.0f, logits.data(), classes);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* l = logits.data() + i * classes;
    if (std::max_element(l, l + classes) - l == y[static_cast<size_t>(i)]) ++correct;
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace

LinearProbeResult linear_probe(const FeatureSet& train, const FeatureSet& test, int num_classes,
                               const LinearProbeOptions& opt) {
  check_features("linear probe train features", train, num_classes);
  check_features("linear probe test features", test, num_classes);
  TS_CHECK(train.dim == test.dim, "linear probe: train features have ", train.dim, " dims, test ", test.dim);
  TS_CHECK(opt.epochs >= 1 && opt.batch_size >= 1, "linear probe: epochs ", opt.epochs, ", batch ", opt.batch_size);
  const int64_t n = train.n, d = train.dim;
  const int c = num_classes;

  // Standardise with the train split's statistics (a dead feature stays 0).
  std::vector<double> mean(static_cast<size_t>(d), 0.0), var(static_cast<size_t>(d), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) mean[static_cast<size_t>(j)] += train.x[static_cast<size_t>(i * d + j)];
  for (double& m : mean) m /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) {
      const double e = train.x[static_cast<size_t>(i * d + j)] - mean[static_cast<size_t>(j)];
      var[static_cast<size_t>(j)] += e * e;
    }
  auto standardise = [&](const FeatureSet& f) {
    std::vector<float> out(f.x.size());
    for (int64_t i = 0; i < f.n; ++i)
      for (int64_t j = 0; j < d; ++j) {
        const size_t jj = static_cast<size_t>(j);
        const double sd = std::sqrt(var[jj] / static_cast<double>(n) + 1e-6);
        out[static_cast<size_t>(i * d + j)] = static_cast<float>((f.x[static_cast<size_t>(i * d + j)] - mean[jj]) / sd);
      }
    return out;
  };
  const std::vector<float> xtr = standardise(train), xte = standardise(test);

  // Softmax regression: w (c, d), b (c); Adam state m, v for both.
  std::vector<float> w(static_cast<size_t>(c * d), 0.0f), b(static_cast<size_t>(c), 0.0f);
  std::vector<float> mw(w.size(), 0.0f), vw(w.size(), 0.0f), mb(b.size(), 0.0f), vb(b.size(), 0.0f);
  std::vector<float> gw(w.size()), gb(b.size());
  const int64_t bs = std::min<int64_t>(opt.batch_size, n);
  const int64_t steps_per_epoch = (n + bs - 1) / bs;
  const int64_t total_steps = steps_per_epoch * opt.epochs;
  std::vector<float> xb(static_cast<size_t>(bs * d)), logits(static_cast<size_t>(bs * c));
  std::vector<int32_t> yb(static_cast<size_t>(bs));
  std::vector<int64_t> order;
  constexpr float kBeta1 = 0.9f, kBeta2 = 0.999f, kEps = 1e-8f;
  double epoch_loss = 0;
  int64_t step = 0;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    // The loader's Fisher-Yates, on a sampler purpose of its own: no training shuffle shares
    // its random numbers.
    order = data::shuffled_order(opt.seed, data::sampler_step(data::SamplerPurpose::LinearProbe, epoch), n);
    epoch_loss = 0;
    for (int64_t s0 = 0; s0 < n; s0 += bs, ++step) {
      const int64_t rows = std::min(bs, n - s0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = order[static_cast<size_t>(s0 + r)];
        std::copy(xtr.begin() + src * d, xtr.begin() + (src + 1) * d, xb.begin() + r * d);
        yb[static_cast<size_t>(r)] = train.y[static_cast<size_t>(src)];
        std::copy(b.begin(), b.end(), logits.begin() + r * c);
      }
      // logits (rows, c) = xb (rows, d) . w^T (d, c) + b
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), c, static_cast<int>(d), 1.0f,
                  xb.data(), static_cast<int>(d), w.data(), static_cast<int>(d), 1.0f, logits.data(), c);
      epoch_loss += softmax_rows(logits.data(), rows, c, yb.data());
      // d(mean CE)/d(logits) = (softmax - onehot) / rows
      for (int64_t r = 0; r < rows; ++r) logits[static_cast<size_t>(r * c + yb[static_cast<size_t>(r)])] -= 1.0f;
      const float inv_rows = 1.0f / static_cast<float>(rows);
      // gw (c, d) = dlogits^T (c, rows) . xb (rows, d) / rows + wd w
      gw = w;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, static_cast<int>(d), static_cast<int>(rows), inv_rows,
                  logits.data(), c, xb.data(), static_cast<int>(d), opt.weight_decay, gw.data(), static_cast<int>(d));
      std::fill(gb.begin(), gb.end(), 0.0f);
      for (int64_t r = 0; r < rows; ++r)
        for (int k = 0; k < c; ++k) gb[static_cast<size_t>(k)] += logits[static_cast<size_t>(r * c + k)] * inv_rows;
      const double t = static_cast<double>(step + 1);
      const float lr = static_cast<float>(opt.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) /
                                                                         static_cast<double>(total_steps))));
      const float c1 = static_cast<float>(1.0 - std::pow(kBeta1, t)), c2 = static_cast<float>(1.0 - std::pow(kBeta2, t));
      auto adam = [&](std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v) {
        for (size_t i = 0; i < p.size(); ++i) {
          m[i] = kBeta1 * m[i] + (1 - kBeta1) * g[i];
          v[i] = kBeta2 * v[i] + (1 - kBeta2) * g[i] * g[i];
          p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + kEps);
        }
      };
      adam(w, gw, mw, vw);
      adam(b, gb, mb, vb);
    }
  }
  LinearProbeResult result;
  result.final_loss = epoch_loss / static_cast<double>(n);
  result.train_top1 = accuracy(xtr, train.y, n, d, w, b, c);
  result.test_top1 = accuracy(xte, test.y, test.n, d, w, b, c);
  return result;
}

}  // namespace tessera
