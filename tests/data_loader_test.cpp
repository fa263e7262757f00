// Samplers and the batch loader: the shuffle is the documented Fisher-Yates, the labeled subset
// is balanced and survives a resume, batches depend only on (seed, position) and never on
// thread timing, a loader resumed mid-epoch continues the same order, and a malformed saved
// position or loader configuration is an error that names the problem.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "data/loader.h"
#include "engine/check.h"
#include "kernels/common/philox.h"
#include "tests/op_case.h"
#include "tests/thrown.h"

namespace fs = std::filesystem;
using tessera::Device;
using tessera::Error;
using tessera::Tensor;
using tessera::thrown;
using namespace tessera::data;

namespace {

// n images (C, H, W) with pixel (i * 7 + k) mod 256 and labels i mod classes.
Dataset make_dataset(int64_t n, int classes, int c = 1, int h = 4, int w = 4, bool labeled = true) {
  Dataset d;
  d.name = "synthetic/train";
  d.size = n;
  d.channels = c;
  d.height = h;
  d.width = w;
  d.num_classes = classes;
  d.images.resize(size_t(n * c * h * w));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d.image_bytes(); ++k) d.images[size_t(i * d.image_bytes() + k)] = uint8_t((i * 7 + k) % 256);
  if (labeled)
    for (int64_t i = 0; i < n; ++i) d.labels.push_back(int32_t(i % classes));
  d.mean.assign(size_t(c), 0.5f);
  d.std.assign(size_t(c), 0.25f);
  return d;
}

// A view that encodes its keys: every value of sample b is index * 1000 + epoch * 10 + view
// (+ seed), with a random pause so the background thread runs at varying speed.
class KeyTransform : public Transform {
 public:
  explicit KeyTransform(int max_sleep_us = 0) : max_sleep_us_(max_sleep_us) {}
  Device device() const override { return Device::CPU; }
  void apply(const ViewRequest& r, const Tensor& out) override {
    if (max_sleep_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(std::rand() % max_sleep_us_));
    const int64_t per = out.numel() / r.count;
    for (int64_t b = 0; b < r.count; ++b)
      for (int64_t k = 0; k < per; ++k)
        out.f32()[b * per + k] = float(r.indices[b] * 1000 + r.epochs[b] * 10 + r.view + int64_t(r.seed) * 100000);
  }

 private:
  int max_sleep_us_;
};

std::vector<float> host_floats(const Tensor& t) { return tessera::to_host_f32(t); }

// Everything a batch holds, on the host, for comparing two runs.
struct Snapshot {
  std::vector<std::vector<float>> views;
  std::vector<std::vector<int32_t>> labels;
  std::vector<std::vector<int64_t>> indices;
  bool operator==(const Snapshot& o) const { return views == o.views && labels == o.labels && indices == o.indices; }
};
Snapshot snapshot(const Batch& b) {
  Snapshot s;
  for (const Tensor& v : b.views) s.views.push_back(host_floats(v));
  for (const Tensor& l : b.labels) s.labels.push_back(l.defined() ? tessera::to_host_i32(l) : std::vector<int32_t>{});
  s.indices = b.indices;
  return s;
}


}  // namespace

// ---- samplers --------------------------------------------------------------------------

TEST(Sampler, ShuffleIsTheDocumentedFisherYates) {
  const uint64_t seed = 1234, step = sampler_step(SamplerPurpose::Main, 3);
  EXPECT_EQ(step, 3u);
  EXPECT_EQ(sampler_step(SamplerPurpose::Unlabeled, 3), (uint64_t{1} << 40) | 3u);
  // The loop of data/sampler.h's header, written out here as a reader would check it.
  std::vector<int64_t> expect{0, 1, 2, 3, 4, 5, 6};
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamSampler, step), 0);
  for (int64_t i = 6; i >= 1; --i) std::swap(expect[size_t(i)], expect[size_t((uint64_t{s.next_u32()} * uint64_t(i + 1)) >> 32)]);
  EXPECT_EQ(shuffled_order(seed, step, 7), expect);
}

TEST(Sampler, ShuffleIsUniformAndKeyed) {
  // All 6 orders of 3 items, 6000 epochs: each count is 1000 +- 4.5 sigma (sigma ~ 29).
  std::map<std::vector<int64_t>, int> counts;
  for (int64_t e = 0; e < 6000; ++e) counts[shuffled_order(7, sampler_step(SamplerPurpose::Main, e), 3)]++;
  ASSERT_EQ(counts.size(), 6u);
  for (const auto& c : counts) EXPECT_NEAR(c.second, 1000, 130);
  const auto a = shuffled_order(7, sampler_step(SamplerPurpose::Main, 0), 100);
  EXPECT_EQ(a, shuffled_order(7, sampler_step(SamplerPurpose::Main, 0), 100));
  EXPECT_NE(a, shuffled_order(8, sampler_step(SamplerPurpose::Main, 0), 100));
  EXPECT_NE(a, shuffled_order(7, sampler_step(SamplerPurpose::Main, 1), 100));
  EXPECT_NE(a, shuffled_order(7, sampler_step(SamplerPurpose::Unlabeled, 0), 100));
}

TEST(Sampler, DropLastLinesEpochsUpWithBatches) {
  IndexStream s(all_indices(10), 4, 5, SamplerPurpose::Main, true, true);
  EXPECT_EQ(s.batches_per_epoch(), 2);
  SamplerPosition at;
  std::vector<int64_t> idx(4), ep(4), seen;
  for (int b = 0; b < 2; ++b) {
    s.next_batch(&at, idx.data(), ep.data());
    EXPECT_EQ(ep, std::vector<int64_t>(4, 0));
    seen.insert(seen.end(), idx.begin(), idx.end());
  }
  EXPECT_EQ(at, (SamplerPosition{1, 0}));  // the 2 left over are skipped
  const auto order = shuffled_order(5, sampler_step(SamplerPurpose::Main, 0), 10);
  EXPECT_EQ(seen, std::vector<int64_t>(order.begin(), order.begin() + 8));
  s.next_batch(&at, idx.data(), ep.data());
  EXPECT_EQ(ep, std::vector<int64_t>(4, 1));
  EXPECT_THROW(IndexStream(all_indices(3), 4, 5, SamplerPurpose::Main, true, true), Error);
}

// A position handed in from outside (a resume): one past the pool is an error naming both,
// and a drop-last position with less than a batch left starts the next epoch, as a position
// the stream wrote itself would have.
TEST(Sampler, ResumedPositionsAreCheckedAndLinedUp) {
  IndexStream s(all_indices(10), 4, 5, SamplerPurpose::Main, true, true);
  std::vector<int64_t> idx(4), ep(4);
  SamplerPosition past{0, 11};
  const std::string past_error = thrown([&] { s.next_batch(&past, idx.data(), ep.data()); });
  EXPECT_NE(past_error.find("sampler position (epoch 0, index 11) does not fit a pool of 10"), std::string::npos)
      << past_error;
  SamplerPosition tail{0, 7};  // 3 left in epoch 0
  s.next_batch(&tail, idx.data(), ep.data());
  EXPECT_EQ(ep, std::vector<int64_t>(4, 1));
  const auto order = shuffled_order(5, sampler_step(SamplerPurpose::Main, 1), 10);
  EXPECT_EQ(idx, std::vector<int64_t>(order.begin(), order.begin() + 4));
  EXPECT_EQ(tail, (SamplerPosition{1, 4}));
}

TEST(Sampler, StreamRunsAcrossEpochsOverAPool) {
  // 5 labeled images, batches of 4: the stream is epoch 0's order, then epoch 1's, ...
  const std::vector<int64_t> pool{100, 101, 102, 103, 104};
  IndexStream s(pool, 4, 9, SamplerPurpose::Main, true, false);
  std::vector<int64_t> got, got_epochs, expect, expect_epochs;
  SamplerPosition at;
  for (int b = 0; b < 5; ++b) {
    std::vector<int64_t> idx(4), ep(4);
    s.next_batch(&at, idx.data(), ep.data());
    got.insert(got.end(), idx.begin(), idx.end());
    got_epochs.insert(got_epochs.end(), ep.begin(), ep.end());
  }
  for (int64_t e = 0; e < 4; ++e)
    for (int64_t k : shuffled_order(9, sampler_step(SamplerPurpose::Main, e), 5)) {
      expect.push_back(pool[size_t(k)]);
      expect_epochs.push_back(e);
    }
  EXPECT_EQ(got, expect);
  EXPECT_EQ(got_epochs, expect_epochs);
  EXPECT_EQ(at, (SamplerPosition{4, 0}));
}

TEST(LabeledSubset, BalancedSeededAndSavedForResume) {
  const Dataset d = make_dataset(200, 10);
  const auto a = choose_labeled_subset(d, 40, 3);
  ASSERT_EQ(a.size(), 40u);
  std::vector<int> per_class(10, 0);
  for (int64_t i : a) per_class[size_t(d.labels[size_t(i)])]++;
  EXPECT_EQ(per_class, std::vector<int>(10, 4));
  EXPECT_EQ(a, choose_labeled_subset(d, 40, 3));
  EXPECT_NE(a, choose_labeled_subset(d, 40, 4));
  EXPECT_THROW(choose_labeled_subset(d, 45, 3), Error);   // not divisible by 10
  EXPECT_THROW(choose_labeled_subset(d, 210, 3), Error);  // 21 per class > 20
  try {
    choose_labeled_subset(d, 45, 3);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by its 10 classes, found 45"), std::string::npos) << e.what();
  }

  const std::string dir = fs::temp_directory_path() / ("tessera-subset-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  EXPECT_EQ(labeled_subset_for_run(dir, d, 40, 3), a);  // chosen and written
  ASSERT_TRUE(fs::exists(dir + "/" + kLabeledSubsetFile));
  // A resumed run reads the file back, whatever seed it is given.
  EXPECT_EQ(labeled_subset_for_run(dir, d, 40, 99), a);
  EXPECT_THROW(labeled_subset_for_run(dir, d, 20, 3), Error);  // --num-labels changed
  std::ofstream(dir + "/" + kLabeledSubsetFile) << "{\"dataset\": \"synthetic/train\", \"indices\": [1, 1]}";
  try {
    read_labeled_subset(dir + "/" + kLabeledSubsetFile, d, 2);
    ADD_FAILURE() << "a duplicated index was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("distinct indices"), std::string::npos) << e.what();
  }
  std::ofstream(dir + "/" + kLabeledSubsetFile) << "not json";
  EXPECT_THROW(read_labeled_subset(dir + "/" + kLabeledSubsetFile, d, 40), Error);
  fs::remove_all(dir);
}

// ---- loader ----------------------------------------------------------------------------

TEST(Loader, ByolBatchesAreNormalisedSampledImages) {
  const Dataset d = make_dataset(20, 4, 3, 2, 3);
  NormalizeTransform norm;
  auto loader = make_byol_loader(d, 8, norm, norm, 11, Device::CPU);
  EXPECT_EQ(loader->batches_per_epoch(), 2);
  IndexStream reference(all_indices(20), 8, 11, SamplerPurpose::Main, true, true);
  SamplerPosition at;
  for (int step = 0; step < 5; ++step) {
    const Batch& b = loader->next();
    std::vector<int64_t> idx(8), ep(8);
    reference.next_batch(&at, idx.data(), ep.data());
    EXPECT_EQ(b.indices[0], idx);
    EXPECT_EQ(b.epochs[0], ep);
    ASSERT_EQ(b.views.size(), 2u);
    EXPECT_EQ(b.views[0].shape, (tessera::Shape{8, 3, 2, 3}));
    EXPECT_FALSE(b.labels[0].defined());
    for (int64_t s = 0; s < 8; ++s)
      for (int64_t k = 0; k < 18; ++k) {
        const float want = (d.image(idx[size_t(s)])[k] / 255.0f - 0.5f) / 0.25f;
        EXPECT_NEAR(b.views[0].f32()[s * 18 + k], want, 1e-5);
        EXPECT_NEAR(b.views[1].f32()[s * 18 + k], want, 1e-5);
      }
  }
  EXPECT_EQ(loader->position().streams[0], at);
  EXPECT_EQ(loader->position().batches, 5);
}

TEST(Loader, BatchesDependOnlyOnSeedAndPosition) {
  const Dataset labeled = make_dataset(30, 3), unlabeled = make_dataset(50, 3, 1, 4, 4, false);
  const std::vector<int64_t> subset{0, 1, 2, 3, 4, 5};
  KeyTransform slow_weak(3000), slow_strong(3000), weak, strong;
  auto a = make_fixmatch_loader(labeled, subset, unlabeled, 4, 3, slow_weak, slow_strong, 21, Device::CPU);
  auto b = make_fixmatch_loader(labeled, subset, unlabeled, 4, 3, weak, strong, 21, Device::CPU);
  for (int step = 0; step < 12; ++step) {
    const Snapshot sa = snapshot(a->next());
    const Snapshot sb = snapshot(b->next());
    ASSERT_TRUE(sa == sb) << "batch " << step << " differs between two loaders of the same seed";
    // Labeled batch: labels of its indices, from the subset only; views keyed by view 2 / 0 / 1.
    for (size_t s = 0; s < 4; ++s) {
      EXPECT_LT(sa.indices[0][s], 6);
      EXPECT_EQ(sa.labels[0][s], labeled.labels[size_t(sa.indices[0][s])]);
      EXPECT_EQ(int64_t(sa.views[0][s * 16]) % 10, 2);
    }
    ASSERT_EQ(sa.views[1].size(), 12u * 16);
    EXPECT_EQ(int64_t(sa.views[1][0]) % 10, 0);
    EXPECT_EQ(int64_t(sa.views[2][0]) % 10, 1);
    EXPECT_TRUE(sa.labels[1].empty());
  }
}

TEST(Loader, ResumingMidEpochContinuesTheSameOrder) {
  const Dataset labeled = make_dataset(30, 3), unlabeled = make_dataset(50, 3);
  const std::vector<int64_t> subset = choose_labeled_subset(labeled, 9, 5);
  KeyTransform weak, strong;
  std::vector<Snapshot> straight;
  LoaderPosition saved;
  {
    auto run = make_fixmatch_loader(labeled, subset, unlabeled, 4, 2, weak, strong, 8, Device::CPU);
    for (int step = 0; step < 9; ++step) {
      straight.push_back(snapshot(run->next()));
      if (step == 3) saved = run->position();  // the checkpoint after step 3
    }
  }
  // Mid-epoch for both streams: 16 of the 9-image labeled stream, 32 of 50 unlabeled.
  EXPECT_EQ(saved.streams[0], (SamplerPosition{1, 7}));
  EXPECT_EQ(saved.streams[1], (SamplerPosition{0, 32}));
  const LoaderPosition restored = LoaderPosition::unpack(saved.pack());
  EXPECT_EQ(restored, saved);
  auto resumed = make_fixmatch_loader(labeled, subset, unlabeled, 4, 2, weak, strong, 8, Device::CPU, restored);
  for (int step = 4; step < 9; ++step) {
    const Batch& b = resumed->next();
    EXPECT_EQ(b.number, step);
    EXPECT_TRUE(snapshot(b) == straight[size_t(step)]) << "resumed batch " << step << " differs";
  }
  // BYOL, resumed inside epoch 0 (batch 1 of 3).
  const Dataset d = make_dataset(26, 2);
  KeyTransform v1, v2;
  auto byol = make_byol_loader(d, 8, v1, v2, 4, Device::CPU);
  byol->next();
  const LoaderPosition mid = byol->position();
  EXPECT_EQ(mid.streams[0], (SamplerPosition{0, 8}));
  std::vector<Snapshot> rest;
  for (int i = 0; i < 4; ++i) rest.push_back(snapshot(byol->next()));
  auto byol2 = make_byol_loader(d, 8, v1, v2, 4, Device::CPU, mid);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(snapshot(byol2->next()) == rest[size_t(i)]) << "byol batch " << i + 1;
  EXPECT_THROW(make_byol_loader(d, 8, v1, v2, 4, Device::CPU, saved), Error);  // 2 streams saved, 1 expected
}

// A checkpoint's loader tensor that is not [batches, epoch, index, ...] with every value
// non-negative is an Error naming what was expected and found, not a position that resumes
// somewhere else (a short vector, an even count, a negative batch count, epoch or index).
TEST(Loader, MalformedSavedPositionsAreRejected) {
  auto message_of = [](const std::vector<int64_t>& v) { return thrown([&] { LoaderPosition::unpack(v); }); };
  const std::string shape = "expected [batches, epoch, index, ...] (an odd count >= 1), found ";
  EXPECT_NE(message_of({}).find(shape + "0 values"), std::string::npos) << message_of({});
  EXPECT_NE(message_of({5, 1}).find(shape + "2 values"), std::string::npos) << message_of({5, 1});
  EXPECT_NE(message_of({5, 1, 2, 3}).find(shape + "4 values"), std::string::npos) << message_of({5, 1, 2, 3});
  EXPECT_NE(message_of({-1, 0, 0}).find(shape + "3 values"), std::string::npos) << message_of({-1, 0, 0});
  const std::string sign = "expected non-negative values, found ";
  EXPECT_NE(message_of({5, -2, 3}).find(sign + "-2, 3"), std::string::npos) << message_of({5, -2, 3});
  EXPECT_NE(message_of({5, 0, 1, 2, -3}).find(sign + "2, -3"), std::string::npos) << message_of({5, 0, 1, 2, -3});
  EXPECT_EQ(message_of({7}), "");  // a loader without streams
  EXPECT_EQ(LoaderPosition::unpack({7, 2, 5, 0, 0}).streams.size(), 2u);
}

// What the loader is given is checked before its thread starts, and each problem is named:
// the programs build these configurations, and a wrong one must not become a batch read past
// a buffer.
TEST(Loader, ConfigurationProblemsAreNamed) {
  struct CudaOnlyTransform : KeyTransform {
    Device device() const override { return Device::CUDA; }
  };
  const Dataset labeled = make_dataset(12, 3), unlabeled = make_dataset(12, 3, 1, 4, 4, /*labeled=*/false);
  KeyTransform key;
  CudaOnlyTransform on_gpu;
  auto config = [&]() {
    LoaderConfig c;
    LoaderStream s;
    s.dataset = &labeled;
    s.pool = all_indices(labeled.size);
    s.batch = 4;
    s.labels = true;
    c.streams.push_back(s);
    c.views.push_back(LoaderView{0, &key, 0});
    return c;
  };
  auto problem_of = [](const LoaderConfig& c) { return thrown([&] { Loader loader(c); }); };
  EXPECT_EQ(problem_of(config()), "");
  struct Case {
    std::function<void(LoaderConfig&)> spoil;
    std::string message;
  };
  const Case cases[] = {
      {[](LoaderConfig& c) { c.views.clear(); }, "loader: expected at least one stream and one view"},
      {[](LoaderConfig& c) { c.prefetch = 0; }, "loader: expected prefetch >= 1, found 0"},
      {[&](LoaderConfig& c) { c.streams[0].dataset = &unlabeled; },
       "loader: labels asked of synthetic/train, which has none"},
      {[](LoaderConfig& c) { c.streams[0].pool.push_back(12); },
       "loader: expected pool indices in [0, 12) of synthetic/train, found 12"},
      {[](LoaderConfig& c) { c.streams[0].pool.push_back(-1); },
       "loader: expected pool indices in [0, 12) of synthetic/train, found -1"},
      {[](LoaderConfig& c) { c.views[0].stream = 1; }, "loader: a view of stream 1 of 1, or without a transform"},
      {[](LoaderConfig& c) { c.views[0].transform = nullptr; },
       "loader: a view of stream 0 of 1, or without a transform"},
      {[&](LoaderConfig& c) { c.views[0].transform = &on_gpu; },
       "loader: a CUDA transform needs a loader on the CUDA device"},
  };
  for (const Case& k : cases) {
    LoaderConfig c = config();
    k.spoil(c);
    EXPECT_EQ(problem_of(c), k.message);
  }
}

namespace {
class SlowTransform : public NormalizeTransform {
 public:
  void apply(const ViewRequest& r, const Tensor& out) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    NormalizeTransform::apply(r, out);
  }
};
class FailingTransform : public NormalizeTransform {
 public:
  void apply(const ViewRequest&, const Tensor&) override { throw Error("augment: expected X, found Y"); }
};
}  // namespace

TEST(Loader, MeasuresDataWaitAndPassesErrorsOn) {
  const Dataset d = make_dataset(16, 2);
  SlowTransform slow;
  auto loader = make_byol_loader(d, 4, slow, slow, 1, Device::CPU);
  for (int i = 0; i < 3; ++i) loader->next();
  // Each batch costs 60 ms of transform and the caller does nothing: it mostly waits.
  EXPECT_GT(loader->wait_seconds(), 0.1);
  FailingTransform failing;
  auto broken = make_byol_loader(d, 4, failing, failing, 1, Device::CPU);
  try {
    broken->next();
    ADD_FAILURE() << "the transform's error was lost";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "augment: expected X, found Y");
  }
}

TEST(Loader, ForEachBatchVisitsEveryImageOnce) {
  const Dataset d = make_dataset(10, 3);
  NormalizeTransform norm;
  std::vector<int64_t> firsts, sizes;
  std::vector<int32_t> labels;
  for_each_batch(d, 4, norm, Device::CPU, [&](const Tensor& x, const Tensor& y, int64_t first) {
    firsts.push_back(first);
    sizes.push_back(x.shape[0]);
    for (int64_t i = 0; i < y.numel(); ++i) labels.push_back(y.i32()[i]);
    EXPECT_NEAR(x.f32()[0], (d.image(first)[0] / 255.0f - 0.5f) / 0.25f, 1e-5);
  });
  EXPECT_EQ(firsts, (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_EQ(labels, d.labels);
}

TEST(Loader, CudaBatchesMatchCpu) {
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA loader not run: " << reason;
  const Dataset labeled = make_dataset(30, 3, 3, 8, 8), unlabeled = make_dataset(40, 3, 3, 8, 8);
  const std::vector<int64_t> subset = choose_labeled_subset(labeled, 6, 2);
  NormalizeTransform weak, strong;
  auto cpu = make_fixmatch_loader(labeled, subset, unlabeled, 4, 3, weak, strong, 6, Device::CPU);
  auto gpu = make_fixmatch_loader(labeled, subset, unlabeled, 4, 3, weak, strong, 6, Device::CUDA);
  for (int step = 0; step < 6; ++step) {
    const Snapshot c = snapshot(cpu->next());
    const Batch& g = gpu->next();
    EXPECT_EQ(g.views[0].device, Device::CUDA);
    EXPECT_TRUE(snapshot(g) == c) << "batch " << step;
  }
}

namespace {

// The shards of ranks 0..R-1 side by side, per view / label stream: what one process gets.
Snapshot joined(const std::vector<Snapshot>& shards) {
  Snapshot all = shards[0];
  for (size_t r = 1; r < shards.size(); ++r) {
    for (size_t v = 0; v < all.views.size(); ++v)
      all.views[v].insert(all.views[v].end(), shards[r].views[v].begin(), shards[r].views[v].end());
    for (size_t s = 0; s < all.labels.size(); ++s) {
      all.labels[s].insert(all.labels[s].end(), shards[r].labels[s].begin(), shards[r].labels[s].end());
      all.indices[s].insert(all.indices[s].end(), shards[r].indices[s].begin(), shards[r].indices[s].end());
    }
  }
  return all;
}

}  // namespace

// Data parallel (engine/distributed.h): the shards of 4 ranks, side by side, are the batches of
// one process with the same global batch, across an epoch boundary and after a resume from the
// position one rank saved; each rank's position is the global one.
TEST(Loader, ShardsOfTheGlobalBatchAreTheOneProcessBatch) {
  const Dataset labeled = make_dataset(30, 3), unlabeled = make_dataset(50, 3);
  const std::vector<int64_t> subset = choose_labeled_subset(labeled, 9, 5);
  KeyTransform weak, strong;
  auto one = make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU);
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < 4; ++r)
    ranks.push_back(make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU, {}, r, 4));
  LoaderPosition saved;
  for (int step = 0; step < 5; ++step) {  // 5 x 16 unlabeled: past the 50-image epoch
    const Snapshot whole = snapshot(one->next());
    std::vector<Snapshot> shards;
    for (auto& l : ranks) {
      const Batch& b = l->next();
      EXPECT_EQ(b.views[0].shape[0], 2);  // 8 labeled / 4 ranks
      EXPECT_EQ(b.views[1].shape[0], 4);  // 16 unlabeled / 4 ranks
      shards.push_back(snapshot(b));
    }
    EXPECT_TRUE(joined(shards) == whole) << "step " << step;
    for (auto& l : ranks) EXPECT_EQ(l->position(), one->position());
    if (step == 2) saved = ranks[3]->position();
  }
  // Resumed from rank 3's position by 2 ranks: the one process's batches 3 and 4 again.
  auto again = make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU, saved);
  auto half0 = make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU, saved, 0, 2);
  auto half1 = make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU, saved, 1, 2);
  for (int step = 3; step < 5; ++step) {
    const Snapshot whole = snapshot(again->next());
    std::vector<Snapshot> shards{snapshot(half0->next()), snapshot(half1->next())};
    EXPECT_TRUE(joined(shards) == whole) << "resumed step " << step;
  }
  // A global batch that does not split: the error names expected and found.
  try {
    make_fixmatch_loader(labeled, subset, unlabeled, 6, 2, weak, strong, 8, Device::CPU, {}, 0, 4);
    ADD_FAILURE() << "a batch of 6 over 4 ranks was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a global batch of 6 does not split evenly over 4 ranks: expected a multiple of 4"),
              std::string::npos)
        << e.what();
  }
  // A rank outside [0, ranks): named, not a shard read past the batch.
  const std::string rank_error =
      thrown([&] { make_fixmatch_loader(labeled, subset, unlabeled, 8, 2, weak, strong, 8, Device::CPU, {}, 2, 2); });
  EXPECT_NE(rank_error.find("expected shard in [0, 2), found 2"), std::string::npos) << rank_error;
}
