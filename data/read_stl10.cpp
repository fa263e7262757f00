// STL-10, binary version: 96x96 RGB images.
//   train_X.bin (5,000 images) + train_y.bin, test_X.bin (8,000) + test_y.bin,
//   unlabeled_X.bin (100,000 images, 2.8 GB), class_names.txt.
// Each image is 3 planes of 96x96 bytes, every plane stored column-major (Fortran order, as
// the dataset was written from MATLAB), so pixel (row r, column c) sits at c * 96 + r and is
// transposed on reading. Labels are bytes 1..10 and become 0..9.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "data/readers.h"
#include "engine/check.h"

namespace tessera::data {

namespace {

constexpr int kSide = 96, kChannels = 3, kClasses = 10;
constexpr int64_t kPlane = int64_t{kSide} * kSide;
constexpr int64_t kImageBytes = kChannels * kPlane;

// Streams the images file into d->images, transposing each plane; the 2.8 GB unlabeled file
// is never held twice.
void read_images(const std::string& path, const std::string& what, Dataset* d) {
  if (const std::string problem = not_a_regular_file(path); !problem.empty()) bad_file(path, what, problem);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) bad_file(path, what, "no such file");
  const int64_t bytes = st.st_size;
  if (bytes == 0 || bytes % kImageBytes != 0)
    bad_file(path, cat(what, ": a whole number of ", kImageBytes, "-byte images"),
             cat(bytes, " bytes (", bytes / kImageBytes, " images and ", bytes % kImageBytes,
                 " bytes over; truncated?)"));
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) bad_file(path, what, cat("no readable file (", std::strerror(errno), ")"));
  d->size = bytes / kImageBytes;
  d->images.resize(static_cast<size_t>(bytes));
  std::vector<uint8_t> column_major(kImageBytes);
  for (int64_t i = 0; i < d->size; ++i) {
    if (std::fread(column_major.data(), 1, kImageBytes, f) != static_cast<size_t>(kImageBytes)) {
      std::fclose(f);
      bad_file(path, cat(d->size, " images"), cat("a read error at image ", i));
    }
    uint8_t* out = d->images.data() + i * kImageBytes;
    for (int c = 0; c < kChannels; ++c)
      for (int col = 0; col < kSide; ++col)
        for (int row = 0; row < kSide; ++row)
          out[c * kPlane + row * kSide + col] = column_major[static_cast<size_t>(c * kPlane + col * kSide + row)];
  }
  std::fclose(f);
}

std::vector<std::string> read_names(const std::string& path) {
  std::vector<std::string> names;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.push_back(line);
  if (names.size() != kClasses) names.clear();
  return names;
}

}  // namespace

Dataset read_stl10(const std::string& path, Split split) {
  const std::string inner = join_path(path, "stl10_binary");
  const std::string dir = dir_exists(inner) ? inner : path;
  const std::string prefix = split == Split::Train ? "train" : split == Split::Test ? "test" : "unlabeled";
  const std::string images_path = join_path(dir, prefix + "_X.bin");

  Dataset d;
  d.channels = kChannels;
  d.height = d.width = kSide;
  d.num_classes = kClasses;
  read_images(images_path, cat("stl10 ", prefix, " images"), &d);
  d.class_names = read_names(join_path(dir, "class_names.txt"));
  if (split == Split::Unlabeled) return d;

  const std::string labels_path = join_path(dir, prefix + "_y.bin");
  const std::vector<uint8_t> labels = read_file(labels_path, cat("stl10 ", prefix, " labels"));
  if (static_cast<int64_t>(labels.size()) != d.size)
    bad_file(labels_path, cat(d.size, " labels, one per image of ", images_path), cat(labels.size()));
  d.labels.resize(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 1 || labels[i] > kClasses)
      bad_file(labels_path, "labels 1..10", cat("label ", int{labels[i]}, " at index ", i));
    d.labels[i] = labels[i] - 1;
  }
  return d;
}

}  // namespace tessera::data
