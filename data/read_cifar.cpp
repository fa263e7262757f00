// CIFAR-10 and CIFAR-100, binary versions.
//
// CIFAR-10: data_batch_1.bin .. data_batch_5.bin (train), test_batch.bin (test); each record is
// 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32, row-major), 10,000 records a file.
// CIFAR-100: train.bin (50,000 records), test.bin (10,000); each record is a coarse label byte
// (0..19), a fine label byte (0..99), then the 3072 pixel bytes. The fine label is the task.
// The pixel layout is already (C, H, W), so a record's pixels are copied as they are.
#include <cstring>
#include <fstream>

#include "data/readers.h"
#include "engine/check.h"

namespace tessera::data {

namespace {

constexpr int kSide = 32, kChannels = 3;
constexpr int64_t kPixels = int64_t{kChannels} * kSide * kSide;

// Class names from the text file that ships with the dataset, when it is there.
std::vector<std::string> read_names(const std::string& path, int num_classes) {
  std::vector<std::string> names;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.push_back(line);
  if (static_cast<int>(names.size()) != num_classes) names.clear();
  return names;
}

void append_records(const std::string& path, int num_classes, const std::string& what, Dataset* d) {
  const int label_bytes = num_classes == 100 ? 2 : 1;
  const int64_t record = label_bytes + kPixels;
  const std::vector<uint8_t> bytes = read_file(path, what);
  const int64_t n = static_cast<int64_t>(bytes.size()) / record;
  if (bytes.empty() || static_cast<int64_t>(bytes.size()) % record != 0)
    bad_file(path, cat(what, ": a whole number of ", record, "-byte records"),
             cat(bytes.size(), " bytes (", n, " records and ", static_cast<int64_t>(bytes.size()) % record,
                 " bytes over; truncated?)"));
  const size_t first = d->labels.size();
  d->labels.resize(first + static_cast<size_t>(n));
  d->images.resize((first + static_cast<size_t>(n)) * kPixels);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* r = bytes.data() + i * record;
    if (num_classes == 100 && r[0] >= 20)
      bad_file(path, "coarse labels 0..19", cat("label ", int{r[0]}, " in record ", i));
    const int label = r[label_bytes - 1];
    if (label >= num_classes)
      bad_file(path, cat("labels 0..", num_classes - 1), cat("label ", label, " in record ", i));
    d->labels[first + static_cast<size_t>(i)] = label;
    std::memcpy(d->images.data() + (first + static_cast<size_t>(i)) * kPixels, r + label_bytes, kPixels);
  }
}

}  // namespace

Dataset read_cifar(const std::string& path, Split split, int num_classes) {
  const std::string kind = num_classes == 100 ? "cifar100" : "cifar10";
  if (split == Split::Unlabeled)
    throw Error(cat(kind, " has no unlabeled split; use the train split's images without labels"));
  // The archives unpack into one folder; accept its parent too.
  const std::string inner = join_path(path, num_classes == 100 ? "cifar-100-binary" : "cifar-10-batches-bin");
  const std::string dir = dir_exists(inner) ? inner : path;

  std::vector<std::string> files;
  if (num_classes == 10) {
    if (split == Split::Train)
      for (int b = 1; b <= 5; ++b) files.push_back(cat("data_batch_", b, ".bin"));
    else
      files.push_back("test_batch.bin");
  } else {
    files.push_back(split == Split::Train ? "train.bin" : "test.bin");
  }

  Dataset d;
  d.channels = kChannels;
  d.height = d.width = kSide;
  d.num_classes = num_classes;
  for (const std::string& f : files)
    append_records(join_path(dir, f), num_classes, cat(kind, " ", split_name(split), " batch ", f), &d);
  d.size = static_cast<int64_t>(d.labels.size());
  d.class_names = read_names(join_path(dir, num_classes == 100 ? "fine_label_names.txt" : "batches.meta.txt"),
                             num_classes);
  return d;
}

}  // namespace tessera::data
