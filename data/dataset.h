// Datasets: images held as uint8 (N, C, H, W) in host memory, labels as int32 (or none), and
// the per-channel mean / std that normalisation uses. Every reader is selected by the
// `--data KIND[:PATH]` spec of every program:
//
//   fashion-mnist[:DIR]  IDX files (gzip or raw); no DIR reads the Debian package's copy
//   mnist:DIR            IDX files (gzip or raw)
//   cifar10:DIR          data_batch_1..5.bin, test_batch.bin (DIR or DIR/cifar-10-batches-bin)
//   cifar100:DIR         train.bin, test.bin, coarse + fine labels, fine used (or DIR/cifar-100-binary)
//   stl10:DIR            train_X/y.bin, test_X/y.bin, unlabeled_X.bin (or DIR/stl10_binary)
//   folder:DIR           DIR/<class>/*.png|jpg|jpeg|bmp, or DIR/train/<class>/..., DIR/test/<class>/...
//
// A file that is missing, has the wrong magic number, is truncated, holds a label out of range,
// disagrees with its partner on the image count or holds an undecodable image is an Error with
// one line: the file, what was expected, what was found.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace tessera::data {

enum class Split {
  Train,
  Test,
  Unlabeled,  // stl10: unlabeled_X.bin; folder: DIR/unlabeled (or every image under DIR)
};
const char* split_name(Split s);

struct Dataset {
  std::string name;              // "fashion-mnist/train"
  int64_t size = 0;              // N
  int channels = 0, height = 0, width = 0;
  int num_classes = 0;           // classes of the task, also for an unlabeled split
  std::vector<uint8_t> images;   // (N, C, H, W)
  std::vector<int32_t> labels;   // (N) in [0, num_classes), empty when unlabeled
  std::vector<float> mean, std;  // per channel, in units of pixel / 255
  std::vector<std::string> class_names;  // folder: the sub-folder names; else "0", "1", ...

  bool labeled() const { return !labels.empty(); }
  int64_t image_bytes() const { return int64_t{channels} * height * width; }
  const uint8_t* image(int64_t i) const { return images.data() + i * image_bytes(); }
  Tensor images_view() const;  // u8 (N, C, H, W) on the CPU, a view of `images`
  std::vector<int64_t> class_counts() const;  // images per class (labeled datasets)
};

// `--data KIND[:PATH]`, parsed. A bad spec is a UsageError naming the flag.
struct DataSpec {
  std::string kind;
  std::string path;  // empty: the kind's default (only fashion-mnist has one)
};
DataSpec parse_data_spec(const std::string& spec);
// The folder a spec reads: its path, or the kind's default (only fashion-mnist has one).
std::string data_root(const DataSpec& spec);

struct DataOptions {
  int image_size = 32;  // folder: images are resized (shorter side) and centre-cropped to this
  int channels = 3;     // folder: 1 (grey) or 3 (RGB)
};

extern const char* const kFashionMnistDir;  // /usr/share/datasets/fashion-mnist

// The programs' --image-size: the side folder images are resized and centre-cropped to (0: the
// default 32). The other kinds have their own size, so a size given for them is a UsageError.
DataOptions data_options(const DataSpec& spec, int image_size);

Dataset load_dataset(const DataSpec& spec, Split split, const DataOptions& options = {});

// A split read beside the training split (test, unlabeled): its images must have the training
// split's shape and classes (an Error naming both splits otherwise), and it takes the training
// split's normalisation, as torchvision's fixed transforms do: a kind without published
// constants (folder) computes its mean / std per split, and a test split normalised with its
// own statistics would shift every feature the evaluation sees.
void match_training_split(const Dataset& train, Dataset* other);

// What identifies a split's contents, wherever its files are: "crc32 89abcdef, 60000 x 1x28x28"
// (zlib's CRC-32 of the images, then the labels). A resumed run compares it with its
// checkpoint's, so it may follow data that moved and refuses data that changed.
std::string fingerprint(const Dataset& d);

// Per-channel mean and std of a dataset's pixels (in pixel / 255), over every image.
void channel_stats(const Dataset& d, std::vector<float>* mean, std::vector<float>* std);

}  // namespace tessera::data
