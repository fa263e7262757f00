// Which images a batch holds: per-epoch shuffles, the labeled subset of a semi-supervised run
// and the resumable position of a stream. Every choice is a pure function of the seed, so a
// run and its resumption see the same images in the same order.
//
// The shuffle a reader can check by hand (Fisher-Yates, Durstenfeld's form):
//
//   order = [0, 1, ..., n-1]
//   s = PhiloxState(seed, philox_subsequence(kStreamSampler, step), 0)
//   for i = n-1 down to 1:
//     j = (s.next_u32() * (i + 1)) >> 32        // uniform in [0, i]; bias below n / 2^32
//     swap(order[i], order[j])
//
// where step = (purpose << 40) | epoch (or | class, for the labeled-subset choice), so the
// labeled stream, the unlabeled stream, the subset choice and the linear probe never share
// random numbers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace tessera::data {

enum class SamplerPurpose : uint64_t {
  Main = 0,         // the stream of a BYOL run, the labeled stream of a FixMatch run
  Unlabeled = 1,    // FixMatch's unlabeled stream
  SubsetChoice = 2,  // which images get labels
  LinearProbe = 3    // the linear probe's epochs over the extracted features (apps/run/evaluation.h)
};
uint64_t sampler_step(SamplerPurpose purpose, int64_t epoch_or_class);

// The permutation of [0, n) drawn for one step (see above).
std::vector<int64_t> shuffled_order(uint64_t seed, uint64_t step, int64_t n);

// Where a stream stands: the next sample is number `index` of epoch `epoch`'s order. This is
// the resumable state of a stream; a checkpoint stores it and a resumed run starts from it.
struct SamplerPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const SamplerPosition& o) const { return epoch == o.epoch && index == o.index; }
  bool operator!=(const SamplerPosition& o) const { return !(*this == o); }
};

// An endless stream of batches over a pool of dataset indices. Epoch e visits the pool in
// shuffled_order(seed, sampler_step(purpose, e)) (or in pool order when not shuffling).
// With drop_last each epoch yields floor(pool / batch) whole batches and the rest of the
// epoch is skipped, so epochs line up with batches (BYOL). Without it a batch runs on into
// the next epoch, which lets a 40-image labeled pool fill batches of 64 (FixMatch).
class IndexStream {
 public:
  IndexStream(std::vector<int64_t> pool, int64_t batch, uint64_t seed, SamplerPurpose purpose, bool shuffle,
              bool drop_last);

  // The next batch from `at`, which it advances: dataset indices and the epoch of each sample.
  void next_batch(SamplerPosition* at, int64_t* indices, int64_t* epochs);

  int64_t batch() const { return batch_; }
  int64_t pool_size() const { return static_cast<int64_t>(pool_.size()); }
  int64_t batches_per_epoch() const;  // with drop_last; otherwise pool / batch rounded up

 private:
  const std::vector<int64_t>& order(int64_t epoch);  // cached for the current epoch

  std::vector<int64_t> pool_;
  int64_t batch_;
  uint64_t seed_;
  SamplerPurpose purpose_;
  bool shuffle_, drop_last_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

std::vector<int64_t> all_indices(int64_t n);  // 0, 1, ..., n-1

// The labeled subset: num_labels images, the same number from every class, chosen by the
// seed (class c's images, in dataset order, permuted by shuffled_order(seed,
// sampler_step(SubsetChoice, c)); the first num_labels / classes are kept). Sorted. An Error
// when num_labels is not a positive multiple of the class count or a class is too small.
std::vector<int64_t> choose_labeled_subset(const Dataset& d, int64_t num_labels, uint64_t seed);

// The run directory's copy of the subset (kLabeledSubsetFile, JSON). A new run chooses and
// writes it; a resumed run (the file exists) reads it back and checks it still fits the
// dataset, so resuming never changes which images carry labels.
extern const char* const kLabeledSubsetFile;  // "labeled_subset.json"
std::vector<int64_t> labeled_subset_for_run(const std::string& run_dir, const Dataset& d, int64_t num_labels,
                                            uint64_t seed);
void write_labeled_subset(const std::string& path, const Dataset& d, uint64_t seed,
                          const std::vector<int64_t>& indices);
std::vector<int64_t> read_labeled_subset(const std::string& path, const Dataset& d, int64_t num_labels);

}  // namespace tessera::data
