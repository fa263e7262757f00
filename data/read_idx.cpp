// MNIST and Fashion-MNIST: IDX files, gzip-compressed or raw.
//
// An IDX file is a big-endian header (magic 0x00000803 for 3-D uint8 images, 0x00000801 for
// 1-D uint8 labels, then one uint32 per dimension) followed by the bytes row-major.
//   train-images-idx3-ubyte[.gz]  (60000, 28, 28)    t10k-images-idx3-ubyte[.gz]  (10000, 28, 28)
//   train-labels-idx1-ubyte[.gz]  (60000)            t10k-labels-idx1-ubyte[.gz]  (10000)
#include <sys/stat.h>

#include <cstdint>
#include <cstring>

#include "data/readers.h"
#include "engine/check.h"

namespace tessera::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string hex(uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", v);
  return s;
}

// The gzip file when there is one, else the raw one when anything has that name (a folder or
// a dangling link is then named in the error); the .gz name when neither exists.
std::string pick(const std::string& dir, const std::string& base) {
  const std::string gz = join_path(dir, base + ".gz");
  const std::string raw = join_path(dir, base);
  struct stat st {};
  return file_exists(gz) || ::lstat(raw.c_str(), &st) != 0 ? gz : raw;
}

// Reads one IDX file and checks its magic, dimension count and length. Returns the bytes
// after the header; `dims` receives the dimensions.
std::vector<uint8_t> read_idx_file(const std::string& path, const std::string& what, uint32_t magic,
                                   int ndim, std::vector<int64_t>* dims) {
  std::vector<uint8_t> bytes = read_maybe_gzip(path, what);
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (bytes.size() < header)
    bad_file(path, cat("an IDX header of ", header, " bytes"), cat("a file of ", bytes.size(), " bytes"));
  const uint32_t found = big_endian_u32(bytes.data());
  if (found != magic) bad_file(path, cat("IDX magic number ", hex(magic), " (", what, ")"), hex(found));
  dims->clear();
  int64_t payload = 1;
  bool overflow = false;  // three 32-bit dimensions can claim more than 2^63 bytes
  for (int i = 0; i < ndim; ++i) {
    dims->push_back(big_endian_u32(bytes.data() + 4 + 4 * i));
    overflow |= __builtin_mul_overflow(payload, dims->back(), &payload);
  }
  const int64_t have = static_cast<int64_t>(bytes.size() - header);
  if (overflow || have != payload) {
    std::string shape;
    for (int64_t d : *dims) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    if (overflow) bad_file(path, "an IDX shape of at most 2^63 bytes", cat("shape ", shape));
    bad_file(path, cat(payload, " data bytes for shape ", shape), cat(have, have < payload ? " (truncated)" : ""));
  }
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(header));
  return bytes;
}

}  // namespace

Dataset read_idx(const std::string& dir, Split split, const std::string& kind) {
  if (split == Split::Unlabeled)
    throw Error(cat(kind, " has no unlabeled split; use the train split's images without labels"));
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string images_path = pick(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = pick(dir, prefix + "-labels-idx1-ubyte");
  const std::string what = cat(kind, " ", split_name(split));

  std::vector<int64_t> image_dims, label_dims;
  Dataset d;
  d.images = read_idx_file(images_path, what + " images", kImagesMagic, 3, &image_dims);
  std::vector<uint8_t> labels = read_idx_file(labels_path, what + " labels", kLabelsMagic, 1, &label_dims);
  if (label_dims[0] != image_dims[0])
    bad_file(labels_path, cat(image_dims[0], " labels, one per image of ", images_path), cat(label_dims[0]));

  // An empty split, or images of zero (or more than int) rows or columns, are not a dataset the
  // programs can train on: refused here rather than as a division by zero or a negative height later.
  if (image_dims[0] < 1 || image_dims[1] < 1 || image_dims[2] < 1 || image_dims[1] > INT32_MAX ||
      image_dims[2] > INT32_MAX)
    bad_file(images_path, "at least one image of at least 1x1 pixels (at most 2147483647 a side)",
             cat("shape ", image_dims[0], "x", image_dims[1], "x", image_dims[2]));
  d.size = image_dims[0];
  d.channels = 1;
  d.height = static_cast<int>(image_dims[1]);
  d.width = static_cast<int>(image_dims[2]);
  d.num_classes = 10;
  d.labels.resize(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= d.num_classes)
      bad_file(labels_path, cat("labels 0..", d.num_classes - 1), cat("label ", int{labels[i]}, " at index ", i));
    d.labels[i] = labels[i];
  }
  if (kind == "fashion-mnist")
    d.class_names = {"t-shirt", "trouser", "pullover", "dress", "coat",
                     "sandal", "shirt", "sneaker", "bag", "ankle-boot"};
  return d;
}

}  // namespace tessera::data
