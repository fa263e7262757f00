#include "data/sampler.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/readers.h"
#include "engine/check.h"
#include "kernels/common/philox.h"

namespace tessera::data {

uint64_t sampler_step(SamplerPurpose purpose, int64_t epoch_or_class) {
  TS_CHECK(epoch_or_class >= 0 && epoch_or_class < (int64_t{1} << 40), "sampler step out of range: ",
           epoch_or_class);
  return (static_cast<uint64_t>(purpose) << 40) | static_cast<uint64_t>(epoch_or_class);
}

std::vector<int64_t> shuffled_order(uint64_t seed, uint64_t step, int64_t n) {
  std::vector<int64_t> order = all_indices(n);
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamSampler, step), 0);
  for (int64_t i = n - 1; i >= 1; --i) {
    const int64_t j = static_cast<int64_t>((uint64_t{s.next_u32()} * static_cast<uint64_t>(i + 1)) >> 32);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

std::vector<int64_t> all_indices(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

// ---- IndexStream -----------------------------------------------------------------------

IndexStream::IndexStream(std::vector<int64_t> pool, int64_t batch, uint64_t seed, SamplerPurpose purpose,
                         bool shuffle, bool drop_last)
    : pool_(std::move(pool)), batch_(batch), seed_(seed), purpose_(purpose), shuffle_(shuffle),
      drop_last_(drop_last) {
  if (batch_ < 1) throw Error(cat("sampler: expected a batch size >= 1, found ", batch_));
  if (pool_.empty()) throw Error("sampler: expected at least one image to sample from, found none");
  if (drop_last_ && pool_size() < batch_)
    throw Error(cat("sampler: a batch of ", batch_, " needs at least as many images, found ", pool_size()));
}

int64_t IndexStream::batches_per_epoch() const {
  return drop_last_ ? pool_size() / batch_ : (pool_size() + batch_ - 1) / batch_;
}

const std::vector<int64_t>& IndexStream::order(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_order_ = shuffle_ ? shuffled_order(seed_, sampler_step(purpose_, epoch), pool_size())
                             : all_indices(pool_size());
    for (int64_t& k : cached_order_) k = pool_[static_cast<size_t>(k)];
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

void IndexStream::next_batch(SamplerPosition* at, int64_t* indices, int64_t* epochs) {
  TS_CHECK(at->epoch >= 0 && at->index >= 0 && at->index <= pool_size(), "sampler position (epoch ", at->epoch,
           ", index ", at->index, ") does not fit a pool of ", pool_size());
  if (drop_last_ && pool_size() - at->index < batch_) *at = SamplerPosition{at->epoch + 1, 0};
  for (int64_t b = 0; b < batch_; ++b) {
    if (at->index == pool_size()) *at = SamplerPosition{at->epoch + 1, 0};
    indices[b] = order(at->epoch)[static_cast<size_t>(at->index)];
    epochs[b] = at->epoch;
    at->index++;
  }
  // Land on the next epoch's start when this one is used up, so a position read between
  // batches names the epoch the next batch comes from.
  if (at->index == pool_size() || (drop_last_ && pool_size() - at->index < batch_))
    *at = SamplerPosition{at->epoch + 1, 0};
}

// ---- labeled subset --------------------------------------------------------------------

const char* const kLabeledSubsetFile = "labeled_subset.json";

std::vector<int64_t> choose_labeled_subset(const Dataset& d, int64_t num_labels, uint64_t seed) {
  if (!d.labeled()) throw Error(cat("labeled subset: ", d.name, " has no labels"));
  const int64_t classes = d.num_classes;
  if (num_labels < classes || num_labels % classes != 0)
    throw Error(cat("labeled subset of ", d.name, ": expected a number of labels divisible by its ", classes,
                    " classes, found ", num_labels));
  const int64_t per_class = num_labels / classes;
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(classes));
  for (int64_t i = 0; i < d.size; ++i) members[static_cast<size_t>(d.labels[static_cast<size_t>(i)])].push_back(i);
  std::vector<int64_t> chosen;
  for (int64_t c = 0; c < classes; ++c) {
    const std::vector<int64_t>& m = members[static_cast<size_t>(c)];
    if (static_cast<int64_t>(m.size()) < per_class)
      throw Error(cat("labeled subset of ", d.name, ": expected ", per_class, " images of class ", c,
                      ", found only ", m.size()));
    const std::vector<int64_t> order =
        shuffled_order(seed, sampler_step(SamplerPurpose::SubsetChoice, c), static_cast<int64_t>(m.size()));
    for (int64_t k = 0; k < per_class; ++k) chosen.push_back(m[static_cast<size_t>(order[static_cast<size_t>(k)])]);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

void write_labeled_subset(const std::string& path, const Dataset& d, uint64_t seed,
                          const std::vector<int64_t>& indices) {
  const nlohmann::json j = {{"dataset", d.name}, {"seed", seed}, {"num_labels", indices.size()}, {"indices", indices}};
  // Temporary file then rename: a killed run leaves the old file or the new one, never half.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump() << "\n";
    out.flush();
    if (!out) throw Error(cat(tmp, ": expected to write the labeled subset, found a write error"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error(cat(path, ": expected to replace it with ", tmp, ", found rename failed"));
}

std::vector<int64_t> read_labeled_subset(const std::string& path, const Dataset& d, int64_t num_labels) {
  const std::vector<uint8_t> bytes = read_file(path, "the labeled subset of a run");
  nlohmann::json j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("indices") || !j["indices"].is_array() ||
      !j.contains("dataset") || !j["dataset"].is_string())
    bad_file(path, "a JSON object with \"dataset\" and \"indices\"", "something else");
  if (j["dataset"].get<std::string>() != d.name)
    bad_file(path, cat("the labeled subset of ", d.name), cat("one of ", j["dataset"].get<std::string>()));
  std::vector<int64_t> indices;
  for (const auto& v : j["indices"]) {
    if (!v.is_number_integer()) bad_file(path, "integer indices", v.dump());
    indices.push_back(v.get<int64_t>());
  }
  if (static_cast<int64_t>(indices.size()) != num_labels)
    bad_file(path, cat(num_labels, " indices (--num-labels)"), cat(indices.size()));
  std::set<int64_t> seen;
  std::vector<int64_t> per_class(static_cast<size_t>(d.num_classes), 0);
  for (int64_t i : indices) {
    if (i < 0 || i >= d.size) bad_file(path, cat("indices in [0, ", d.size, ")"), cat("index ", i));
    if (!seen.insert(i).second) bad_file(path, "distinct indices", cat("index ", i, " twice"));
    per_class[static_cast<size_t>(d.labels[static_cast<size_t>(i)])]++;
  }
  for (int64_t c = 0; c < d.num_classes; ++c)
    if (per_class[static_cast<size_t>(c)] != num_labels / d.num_classes)
      bad_file(path, cat(num_labels / d.num_classes, " images of every class"),
               cat(per_class[static_cast<size_t>(c)], " of class ", c));
  return indices;
}

std::vector<int64_t> labeled_subset_for_run(const std::string& run_dir, const Dataset& d, int64_t num_labels,
                                            uint64_t seed) {
  const std::string path = join_path(run_dir, kLabeledSubsetFile);
  if (file_exists(path)) return read_labeled_subset(path, d, num_labels);
  std::vector<int64_t> indices = choose_labeled_subset(d, num_labels, seed);
  write_labeled_subset(path, d, seed, indices);
  return indices;
}

}  // namespace tessera::data
