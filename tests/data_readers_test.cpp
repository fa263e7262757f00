// Dataset readers: every format loads files the tests write themselves, and every bad-input
// case (missing file, wrong magic, short header, truncated or trailing bytes, empty file, zero
// or oversized IDX dimensions, damaged gzip, label out of range at its first bad value, counts
// that disagree, undecodable image, empty class folder, unsupported options) gives its one-line
// error naming the file, the expectation and the find. Also: class names and their order,
// folder crops and unlabeled sources, and the normalisation constants (published for named
// datasets, measured for folders).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "engine/check.h"

namespace fs = std::filesystem;
using tessera::Error;
using tessera::UsageError;
using namespace tessera::data;

namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tessera-data-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  gzclose(f);
}

void put_be32(std::vector<uint8_t>* v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v->push_back(uint8_t(x >> s));
}

// An IDX file: magic, dims, then the bytes.
std::vector<uint8_t> idx(uint32_t magic, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> v;
  put_be32(&v, magic);
  for (uint32_t d : dims) put_be32(&v, d);
  v.insert(v.end(), data.begin(), data.end());
  return v;
}

// n images of 4x3 (H x W) with pixel value (i * 16 + k) and labels i % 10.
void write_mnist(const std::string& dir, const std::string& prefix, uint32_t n, bool gzip) {
  std::vector<uint8_t> pixels, labels;
  for (uint32_t i = 0; i < n; ++i) {
    for (int k = 0; k < 12; ++k) pixels.push_back(uint8_t(i * 16 + k));
    labels.push_back(uint8_t(i % 10));
  }
  fs::create_directories(dir);
  const auto images = idx(0x803, {n, 4, 3}, pixels), labs = idx(0x801, {n}, labels);
  const std::string ip = dir + "/" + prefix + "-images-idx3-ubyte", lp = dir + "/" + prefix + "-labels-idx1-ubyte";
  if (gzip) {
    write_gzip(ip + ".gz", images);
    write_gzip(lp + ".gz", labs);
  } else {
    write_bytes(ip, images);
    write_bytes(lp, labs);
  }
}

// Expects `f` to throw a tessera::Error whose one-line message holds every fragment.
template <typename F>
void expect_error(F f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << fragments[0] << "'";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
    for (const std::string& frag : fragments) EXPECT_NE(m.find(frag), std::string::npos) << "'" << frag << "' not in: " << m;
  }
}

}  // namespace

TEST(DataSpec, ParsesKindsAndPaths) {
  EXPECT_EQ(parse_data_spec("fashion-mnist").kind, "fashion-mnist");
  EXPECT_EQ(parse_data_spec("fashion-mnist").path, "");
  const DataSpec s = parse_data_spec("cifar10:/data/c10:x");
  EXPECT_EQ(s.kind, "cifar10");
  EXPECT_EQ(s.path, "/data/c10:x");  // only the first colon separates
  EXPECT_THROW(parse_data_spec("imagenet:/x"), UsageError);
  EXPECT_THROW(parse_data_spec("cifar10"), UsageError);  // no default path
  EXPECT_THROW(parse_data_spec("mnist:"), UsageError);
  try {
    parse_data_spec("svhn");
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--data"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'svhn'"), std::string::npos);
  }
}

TEST(IdxReader, LoadsGzipAndRaw) {
  TempDir dir;
  write_mnist(dir / "gz", "train", 5, true);
  write_mnist(dir / "raw", "t10k", 3, false);
  const Dataset a = load_dataset(parse_data_spec("mnist:" + (dir / "gz")), Split::Train);
  EXPECT_EQ(a.name, "mnist/train");
  EXPECT_EQ(a.size, 5);
  EXPECT_EQ(a.channels, 1);
  EXPECT_EQ(a.height, 4);
  EXPECT_EQ(a.width, 3);
  EXPECT_EQ(a.labels, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(a.image(2)[5], 2 * 16 + 5);
  EXPECT_FLOAT_EQ(a.mean[0], 0.1307f);
  const Dataset b = load_dataset(parse_data_spec("fashion-mnist:" + (dir / "raw")), Split::Test);
  EXPECT_EQ(b.size, 3);
  EXPECT_EQ(b.image(1)[11], 16 + 11);
  EXPECT_EQ(b.class_names[9], "ankle-boot");
}

// A folder, a dangling link or a FIFO where a data file should be: named as what it is (the
// raw file, not a .gz the user never had), and a FIFO is not opened (that would block).
TEST(IdxReader, AFileThatIsNotARegularFileIsNamedAsWhatItIs) {
  TempDir dir;
  write_mnist(dir / "d", "train", 5, false);
  fs::remove(dir / "d/train-images-idx3-ubyte");
  fs::create_directories(dir / "d/train-images-idx3-ubyte");
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + (dir / "d")), Split::Train); },
               {"d/train-images-idx3-ubyte: expected", "found a folder"});
  fs::remove(dir / "d/train-images-idx3-ubyte");
  fs::create_symlink(dir / "d/gone", dir / "d/train-images-idx3-ubyte");
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + (dir / "d")), Split::Train); },
               {"d/train-images-idx3-ubyte: expected", "found no such file"});
  const std::string stl = dir / "stl";
  fs::create_directories(stl);
  write_bytes(stl + "/train_X.bin", std::vector<uint8_t>(27648, 0));
  ASSERT_EQ(::mkfifo((stl + "/train_y.bin").c_str(), 0600), 0);
  expect_error([&] { load_dataset(parse_data_spec("stl10:" + stl), Split::Train); },
               {"train_y.bin", "not a regular file"});
}

TEST(IdxReader, BadInputErrors) {
  TempDir dir;
  const auto load = [&](const std::string& sub) {
    return [&, sub] { load_dataset(parse_data_spec("mnist:" + (dir / sub)), Split::Train); };
  };
  // Missing file: names the file and what it should hold.
  expect_error(load("none"), {dir / "none/train-images-idx3-ubyte.gz", "mnist train images", "no such file"});

  // Wrong magic: labels file where images are expected.
  write_mnist(dir / "magic", "train", 4, false);
  write_bytes(dir / "magic/train-images-idx3-ubyte", idx(0x801, {4, 4, 3}, std::vector<uint8_t>(48)));
  expect_error(load("magic"), {"train-images-idx3-ubyte", "magic number 0x00000803", "found 0x00000801"});

  // Truncated raw file.
  write_mnist(dir / "trunc", "train", 4, false);
  write_bytes(dir / "trunc/train-images-idx3-ubyte", idx(0x803, {4, 4, 3}, std::vector<uint8_t>(40)));
  expect_error(load("trunc"), {"train-images-idx3-ubyte", "expected 48 data bytes", "found 40 (truncated)"});

  // A header whose shape overflows 64 bits (found by tests/fuzz/idx_fuzz.cpp: the product of the
  // dimensions was signed-overflow UB): a clear error naming the shape.
  write_mnist(dir / "huge", "train", 4, false);
  write_bytes(dir / "huge/train-images-idx3-ubyte", idx(0x803, {0xffffffffu, 0xffffffffu, 0xffffffffu}, {}));
  expect_error(load("huge"), {"train-images-idx3-ubyte", "an IDX shape of at most 2^63 bytes",
                              "shape 4294967295x4294967295x4294967295"});

  // Truncated gzip stream: the compressed file cut short.
  write_mnist(dir / "gztrunc", "train", 200, true);
  {
    std::ifstream in(dir / "gztrunc/train-images-idx3-ubyte.gz", std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes.resize(bytes.size() / 2);
    write_bytes(dir / "gztrunc/train-images-idx3-ubyte.gz", bytes);
  }
  expect_error(load("gztrunc"), {"train-images-idx3-ubyte.gz", "a complete gzip stream", "cut short (truncated)"});

  // Label out of range.
  write_mnist(dir / "label", "train", 3, false);
  write_bytes(dir / "label/train-labels-idx1-ubyte", idx(0x801, {3}, {1, 12, 2}));
  expect_error(load("label"), {"train-labels-idx1-ubyte", "labels 0..9", "label 12 at index 1"});

  // Image and label counts disagree.
  write_mnist(dir / "count", "train", 3, false);
  write_bytes(dir / "count/train-labels-idx1-ubyte", idx(0x801, {2}, {1, 2}));
  expect_error(load("count"), {"train-labels-idx1-ubyte", "expected 3 labels", "found 2"});
}

// A file shorter than its IDX header is an error naming both sizes (no header bytes read past
// the end), and bytes after the data are an error too, not silently ignored: the header's shape
// must account for the whole file.
TEST(IdxReader, ShortHeaderAndTrailingBytesAreErrors) {
  TempDir dir;
  const auto load = [&](const std::string& sub) {
    return [&, sub] { load_dataset(parse_data_spec("mnist:" + (dir / sub)), Split::Train); };
  };
  write_mnist(dir / "short", "train", 2, false);
  write_bytes(dir / "short/train-images-idx3-ubyte", {0, 0, 8, 3, 0, 0});  // magic + half a dimension
  expect_error(load("short"), {"train-images-idx3-ubyte", "an IDX header of 16 bytes", "a file of 6 bytes"});

  write_mnist(dir / "long", "train", 4, false);
  write_bytes(dir / "long/train-images-idx3-ubyte", idx(0x803, {4, 4, 3}, std::vector<uint8_t>(48 + 4)));
  expect_error(load("long"), {"train-images-idx3-ubyte", "expected 48 data bytes for shape 4x4x3", "found 52"});
}

// An IDX images file whose length matches a shape with a zero dimension (no images, or images
// of no rows or columns) is refused, as the CIFAR and STL-10 readers refuse empty files; so is
// a side past int, which a zero image count lets through the length check.
TEST(IdxReader, ZeroAndOversizedDimensionsAreErrors) {
  TempDir dir;
  const auto load = [&](const std::string& sub) {
    return [&, sub] { load_dataset(parse_data_spec("mnist:" + (dir / sub)), Split::Train); };
  };
  const std::string expected = "at least one image of at least 1x1 pixels (at most 2147483647 a side)";
  write_mnist(dir / "flat", "train", 2, false);
  write_bytes(dir / "flat/train-images-idx3-ubyte", idx(0x803, {2, 0, 28}, {}));
  expect_error(load("flat"), {"train-images-idx3-ubyte", expected, "found shape 2x0x28"});
  write_mnist(dir / "none", "train", 0, false);
  write_bytes(dir / "none/train-images-idx3-ubyte", idx(0x803, {0, 28, 28}, {}));
  expect_error(load("none"), {"train-images-idx3-ubyte", expected, "found shape 0x28x28"});
  write_mnist(dir / "tall", "train", 0, false);
  write_bytes(dir / "tall/train-images-idx3-ubyte", idx(0x803, {0, 2147483648u, 1}, {}));
  expect_error(load("tall"), {"train-images-idx3-ubyte", expected, "found shape 0x2147483648x1"});
}

// Label 10 is the first out of range for ten classes (BadInputErrors uses 12).
TEST(IdxReader, LabelTenIsOutOfRange) {
  TempDir dir;
  write_mnist(dir.path(), "train", 3, false);
  write_bytes(dir / "train-labels-idx1-ubyte", idx(0x801, {3}, {9, 0, 10}));
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + dir.path()), Split::Train); },
               {"train-labels-idx1-ubyte", "labels 0..9", "label 10 at index 2"});
}

// With both the .gz and the raw file present the .gz one is read (the documented choice); here
// the raw copy holds 2 images and the gzip copy 5, so the size tells which was read.
TEST(IdxReader, PrefersGzipWhenBothExist) {
  TempDir dir;
  write_mnist(dir.path(), "train", 2, false);
  write_mnist(dir.path(), "train", 5, true);
  EXPECT_EQ(load_dataset(parse_data_spec("mnist:" + dir.path()), Split::Train).size, 5);
}

// MNIST's classes are the digits "0".."9" (only Fashion-MNIST has names), its class counts
// come from the labels, and there is no unlabeled split: asking for one is an error, never
// another split's images.
TEST(IdxReader, MnistClassNamesCountsAndNoUnlabeledSplit) {
  TempDir dir;
  write_mnist(dir.path(), "train", 12, false);  // labels 0..9, 0, 1
  const Dataset d = load_dataset(parse_data_spec("mnist:" + dir.path()), Split::Train);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}));
  EXPECT_EQ(d.class_counts(), (std::vector<int64_t>{2, 2, 1, 1, 1, 1, 1, 1, 1, 1}));
  write_mnist(dir.path(), "t10k", 2, false);
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + dir.path()), Split::Unlabeled); },
               {"mnist has no unlabeled split"});
}

// A gzip stream with damaged deflate data (not just cut short) is an error, not garbage bytes.
TEST(IdxReader, DamagedGzipStreamIsAnError) {
  TempDir dir;
  write_mnist(dir.path(), "train", 200, true);
  const std::string path = dir / "train-images-idx3-ubyte.gz";
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  ASSERT_GT(bytes.size(), 60u);
  for (size_t k = 20; k < 40; ++k) bytes[k] = uint8_t(~bytes[k]);  // inside the deflate data
  write_bytes(path, bytes);
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + dir.path()), Split::Train); },
               {"train-images-idx3-ubyte.gz", "a complete gzip stream", "a damaged stream"});
}

// A DIR given with a trailing slash names its files with one slash, not two.
TEST(IdxReader, TrailingSlashInDirGivesCleanPaths) {
  TempDir dir;
  expect_error([&] { load_dataset(parse_data_spec("mnist:" + dir.path() + "/"), Split::Train); },
               {dir.path() + "/train-images-idx3-ubyte.gz", "no such file"});
}

// ---- CIFAR -----------------------------------------------------------------------------

namespace {
// A CIFAR record per image: labels then R, G, B planes with pixel value (seed + channel).
std::vector<uint8_t> cifar_records(const std::vector<std::vector<uint8_t>>& labels, uint8_t seed) {
  std::vector<uint8_t> v;
  for (size_t i = 0; i < labels.size(); ++i) {
    v.insert(v.end(), labels[i].begin(), labels[i].end());
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 1024; ++k) v.push_back(uint8_t(seed + i + c * 50 + (k == 0 ? 7 : 0)));
  }
  return v;
}
}  // namespace

TEST(CifarReader, Cifar10BatchesAndErrors) {
  TempDir dir;
  const std::string root = dir / "c10/cifar-10-batches-bin";  // the archive's own folder
  for (int b = 1; b <= 5; ++b) write_bytes(root + "/data_batch_" + std::to_string(b) + ".bin", cifar_records({{uint8_t(b)}, {9}}, uint8_t(b * 10)));
  write_bytes(root + "/test_batch.bin", cifar_records({{3}}, 100));
  const Dataset train = load_dataset(parse_data_spec("cifar10:" + (dir / "c10")), Split::Train);
  EXPECT_EQ(train.size, 10);
  EXPECT_EQ(train.channels, 3);
  EXPECT_EQ(train.height, 32);
  EXPECT_EQ(train.labels, (std::vector<int32_t>{1, 9, 2, 9, 3, 9, 4, 9, 5, 9}));
  // Batch 2, record 1: green plane starts at 1024 with seed 20 + 1 + 50 + 7.
  EXPECT_EQ(train.image(3)[1024], 20 + 1 + 50 + 7);
  EXPECT_EQ(train.image(3)[1025], 20 + 1 + 50);
  EXPECT_EQ(load_dataset(parse_data_spec("cifar10:" + root), Split::Test).labels, (std::vector<int32_t>{3}));

  const auto load = [&] { load_dataset(parse_data_spec("cifar10:" + root), Split::Train); };
  write_bytes(root + "/data_batch_3.bin", std::vector<uint8_t>(3073 * 2 - 5));
  expect_error(load, {"data_batch_3.bin", "whole number of 3073-byte records", "6141 bytes", "truncated"});
  write_bytes(root + "/data_batch_3.bin", cifar_records({{4}, {10}}, 0));
  expect_error(load, {"data_batch_3.bin", "labels 0..9", "label 10 in record 1"});
  fs::remove(root + "/data_batch_3.bin");
  expect_error(load, {"data_batch_3.bin", "cifar10 train batch", "found no such file"});
}

TEST(CifarReader, Cifar100UsesFineLabels) {
  TempDir dir;
  write_bytes(dir / "train.bin", cifar_records({{19, 99}, {0, 42}}, 1));
  write_bytes(dir / "test.bin", cifar_records({{25, 3}}, 1));
  const Dataset d = load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Train);
  EXPECT_EQ(d.num_classes, 100);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{99, 42}));
  EXPECT_EQ(d.image(1)[2048 + 3], 1 + 1 + 100);
  expect_error([&] { load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Test); },
               {"test.bin", "coarse labels 0..19", "label 25 in record 0"});
  write_bytes(dir / "test.bin", cifar_records({{2, 100}}, 1));
  expect_error([&] { load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Test); },
               {"test.bin", "labels 0..99", "label 100"});
}

// An empty batch file holds no whole record: an error, not a batch of zero images.
TEST(CifarReader, EmptyBatchIsAnError) {
  TempDir dir;
  write_bytes(dir / "test_batch.bin", {});
  expect_error([&] { load_dataset(parse_data_spec("cifar10:" + dir.path()), Split::Test); },
               {"test_batch.bin", "whole number of 3073-byte records", "found 0 bytes"});
}

// CIFAR-100 has 20 coarse classes: coarse label 20 is the first out of range (the older test
// uses 25), and there is no unlabeled split.
TEST(CifarReader, Cifar100CoarseLabelTwentyAndNoUnlabeledSplit) {
  TempDir dir;
  write_bytes(dir / "test.bin", cifar_records({{19, 5}, {20, 5}}, 1));
  write_bytes(dir / "train.bin", cifar_records({{19, 5}}, 1));
  expect_error([&] { load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Test); },
               {"test.bin", "coarse labels 0..19", "label 20 in record 1"});
  expect_error([&] { load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Unlabeled); },
               {"cifar100 has no unlabeled split"});
}

// A CIFAR-100 record's pixels start after both label bytes: pixel 0 of each plane is the
// marked one (+7) of cifar_records, and the image buffer holds exactly N x 3072 bytes.
TEST(CifarReader, Cifar100PixelsStartAfterBothLabelBytes) {
  TempDir dir;
  write_bytes(dir / "train.bin", cifar_records({{1, 2}, {3, 4}}, 10));
  const Dataset d = load_dataset(parse_data_spec("cifar100:" + dir.path()), Split::Train);
  ASSERT_EQ(d.size, 2);
  EXPECT_EQ(d.images.size(), 2u * 3072u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(d.image(1)[c * 1024], 10 + 1 + c * 50 + 7) << c;
    EXPECT_EQ(d.image(1)[c * 1024 + 1], 10 + 1 + c * 50) << c;
  }
  EXPECT_EQ(d.image(1)[3071], 10 + 1 + 100);
}

// Class names come from the dataset's own text file (batches.meta.txt, fine_label_names.txt),
// blank lines skipped (the real batches.meta.txt ends with one); a file with the wrong number
// of names is ignored and the classes are numbered instead.
TEST(CifarReader, ClassNamesFromTheDatasetsTextFile) {
  TempDir dir;
  write_bytes(dir / "c10/test_batch.bin", cifar_records({{3}}, 0));
  std::string names;
  for (int c = 0; c < 10; ++c) names += "class" + std::to_string(c) + "\n";
  std::ofstream(dir / "c10/batches.meta.txt") << names << "\n";
  const Dataset a = load_dataset(parse_data_spec("cifar10:" + (dir / "c10")), Split::Test);
  ASSERT_EQ(a.class_names.size(), 10u);
  EXPECT_EQ(a.class_names[0], "class0");
  EXPECT_EQ(a.class_names[9], "class9");

  std::ofstream(dir / "c10/batches.meta.txt") << "cat\ndog\n";
  const Dataset b = load_dataset(parse_data_spec("cifar10:" + (dir / "c10")), Split::Test);
  ASSERT_EQ(b.class_names.size(), 10u);
  EXPECT_EQ(b.class_names[3], "3");

  write_bytes(dir / "c100/test.bin", cifar_records({{0, 99}}, 0));
  std::string fine, coarse;
  for (int c = 0; c < 100; ++c) fine += "fine" + std::to_string(c) + "\n";
  for (int c = 0; c < 20; ++c) coarse += "coarse" + std::to_string(c) + "\n";
  std::ofstream(dir / "c100/fine_label_names.txt") << fine;
  std::ofstream(dir / "c100/coarse_label_names.txt") << coarse;
  const Dataset c = load_dataset(parse_data_spec("cifar100:" + (dir / "c100")), Split::Test);
  ASSERT_EQ(c.class_names.size(), 100u);
  EXPECT_EQ(c.class_names[99], "fine99");
}

// ---- STL-10 ----------------------------------------------------------------------------

namespace {
// Pixel (c, row, col) of image i is (i + 3c + 2row + col) mod 256, written column-major.
std::vector<uint8_t> stl_images(int n) {
  std::vector<uint8_t> v;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c)
      for (int col = 0; col < 96; ++col)
        for (int row = 0; row < 96; ++row) v.push_back(uint8_t(i + 3 * c + 2 * row + col));
  return v;
}
}  // namespace

TEST(Stl10Reader, TransposesAndShiftsLabels) {
  TempDir dir;
  const std::string root = dir / "stl10_binary";
  write_bytes(root + "/train_X.bin", stl_images(2));
  write_bytes(root + "/train_y.bin", {1, 10});
  write_bytes(root + "/unlabeled_X.bin", stl_images(3));
  const Dataset d = load_dataset(parse_data_spec("stl10:" + dir.path()), Split::Train);
  ASSERT_EQ(d.size, 2);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 9}));
  const int c = 2, row = 5, col = 7;
  EXPECT_EQ(d.image(1)[c * 9216 + row * 96 + col], 1 + 3 * c + 2 * row + col);
  const Dataset u = load_dataset(parse_data_spec("stl10:" + root), Split::Unlabeled);
  EXPECT_EQ(u.size, 3);
  EXPECT_FALSE(u.labeled());
  EXPECT_EQ(u.num_classes, 10);

  const auto load = [&] { load_dataset(parse_data_spec("stl10:" + root), Split::Train); };
  write_bytes(root + "/train_y.bin", {1, 0});
  expect_error(load, {"train_y.bin", "labels 1..10", "label 0 at index 1"});
  write_bytes(root + "/train_y.bin", {1, 2, 3});
  expect_error(load, {"train_y.bin", "expected 2 labels", "found 3"});
  std::vector<uint8_t> cut = stl_images(2);
  cut.resize(cut.size() - 100);
  write_bytes(root + "/train_X.bin", cut);
  expect_error(load, {"train_X.bin", "27648-byte images", "truncated"});
  expect_error([&] { load_dataset(parse_data_spec("stl10:" + root), Split::Test); }, {"test_X.bin", "no such file"});
}

// An empty images file is an error, not a dataset of no images; label 11 is out of range
// (labels are 1..10; TransposesAndShiftsLabels covers 0).
TEST(Stl10Reader, EmptyImagesAndLabelElevenAreErrors) {
  TempDir dir;
  write_bytes(dir / "test_X.bin", {});
  write_bytes(dir / "test_y.bin", {});
  expect_error([&] { load_dataset(parse_data_spec("stl10:" + dir.path()), Split::Test); },
               {"test_X.bin", "27648-byte images", "found 0 bytes"});
  write_bytes(dir / "train_X.bin", stl_images(2));
  write_bytes(dir / "train_y.bin", {10, 11});
  expect_error([&] { load_dataset(parse_data_spec("stl10:" + dir.path()), Split::Train); },
               {"train_y.bin", "labels 1..10", "label 11 at index 1"});
}

// class_names.txt gives the names when it has exactly ten; otherwise the classes are numbered.
TEST(Stl10Reader, ClassNamesFromClassNamesTxt) {
  TempDir dir;
  write_bytes(dir / "unlabeled_X.bin", stl_images(1));
  std::ofstream(dir / "class_names.txt") << "airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n";
  EXPECT_EQ(load_dataset(parse_data_spec("stl10:" + dir.path()), Split::Unlabeled).class_names[7], "monkey");
  std::ofstream(dir / "class_names.txt") << "airplane\nbird\n";
  const Dataset d = load_dataset(parse_data_spec("stl10:" + dir.path()), Split::Unlabeled);
  ASSERT_EQ(d.class_names.size(), 10u);
  EXPECT_EQ(d.class_names[1], "1");
}

// ---- folder ----------------------------------------------------------------------------

TEST(FolderReader, ClassesCropResizeAndSplits) {
  TempDir dir;
  // 6x3 RGB image: columns 0-1 black, 2-3 grey 200, 4-5 black; its centre square is columns 1-3.
  std::vector<uint8_t> stripes(6 * 3 * 3, 0);
  for (int y = 0; y < 3; ++y)
    for (int x = 2; x < 4; ++x)
      for (int c = 0; c < 3; ++c) stripes[size_t((y * 6 + x) * 3 + c)] = 200;
  std::vector<uint8_t> red(5 * 5 * 3, 0);
  for (size_t k = 0; k < red.size(); k += 3) red[k] = 250;
  fs::create_directories(dir / "train/cat");
  fs::create_directories(dir / "train/dog");
  fs::create_directories(dir / "test/dog");
  ASSERT_TRUE(stbi_write_png((dir / "train/cat/a.png").c_str(), 6, 3, 3, stripes.data(), 6 * 3));
  ASSERT_TRUE(stbi_write_bmp((dir / "train/dog/b.bmp").c_str(), 5, 5, 3, red.data()));
  ASSERT_TRUE(stbi_write_jpg((dir / "train/dog/c.jpg").c_str(), 5, 5, 3, red.data(), 95));
  ASSERT_TRUE(stbi_write_png((dir / "test/dog/d.png").c_str(), 5, 5, 3, red.data(), 15));
  write_bytes(dir / "train/dog/notes.txt", {'h', 'i'});  // not an image: ignored

  DataOptions opt;
  opt.image_size = 3;
  const Dataset d = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt);
  ASSERT_EQ(d.size, 3);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 1, 1}));
  // Centre crop of the stripes at unchanged size: columns 1, 2, 3 -> 0, 200, 200.
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(d.image(0)[c * 9 + 3 + 0], 0, 1);
    EXPECT_NEAR(d.image(0)[c * 9 + 3 + 1], 200, 1);
    EXPECT_NEAR(d.image(0)[c * 9 + 3 + 2], 200, 1);
  }
  // A flat image stays flat when shrunk 5 -> 3 (BMP is lossless).
  EXPECT_NEAR(d.image(1)[4], 250, 1);
  EXPECT_NEAR(d.image(1)[9 + 4], 0, 1);
  const Dataset t = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Test, opt);
  EXPECT_EQ(t.labels, (std::vector<int32_t>{1}));  // numbered as in train
  opt.channels = 1;
  const Dataset u = load_dataset(parse_data_spec("folder:" + (dir / "train")), Split::Unlabeled, opt);
  EXPECT_EQ(u.size, 3);
  EXPECT_FALSE(u.labeled());
  EXPECT_EQ(u.channels, 1);

  // An undecodable image names its file.
  write_bytes(dir / "train/cat/broken.png", {'n', 'o', 't', ' ', 'p', 'n', 'g'});
  expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt); },
               {"train/cat/broken.png", "expected a PNG, JPEG or BMP image", "undecodable"});
  fs::remove(dir / "train/cat/broken.png");

  // A damaged header claiming far more pixels than the file holds is refused before decoding
  // (found by tests/fuzz/folder_fuzz.cpp: 68 bytes claiming 6 x 13828100 pixels took stb_image
  // seconds and a 250 MB allocation). Height 100000: over what 68 bytes can hold; height
  // 13828100: over the 64-megapixel cap as well; height 0 (also found by the fuzzer) decodes in
  // stb_image and then failed an assertion in the resize.
  for (const auto& [height, message] :
       std::vector<std::pair<uint32_t, std::string>>{{100000, "a header claiming 6x100000 pixels in 68 bytes"},
                                                     {13828100, "at most 67108864 pixels, found 6x13828100"},
                                                     {0, "expected an image with pixels, found 6x0"}}) {
    std::vector<uint8_t> bmp = {'B', 'M', 68, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0,  // file header
                                40, 0, 0, 0, 6, 0, 0, 0,                        // info header, width 6
                                uint8_t(height), uint8_t(height >> 8), uint8_t(height >> 16), uint8_t(height >> 24),
                                1, 0, 24, 0};                                   // 1 plane, 24 bits
    bmp.resize(68, 0);
    write_bytes(dir / "train/cat/huge.bmp", bmp);
    expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt); },
                 {"train/cat/huge.bmp", message});
  }
  fs::remove(dir / "train/cat/huge.bmp");
  fs::create_directories(dir / "test/bird");
  ASSERT_TRUE(stbi_write_png((dir / "test/bird/e.png").c_str(), 5, 5, 3, red.data(), 15));
  expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Test, opt); },
               {"test/bird", "a class the train split does not have"});
  expect_error([&] { load_dataset(parse_data_spec("folder:" + (dir / "nothing")), Split::Train, opt); },
               {"nothing", "no such folder"});
}

// Hidden folders and files (.git, .ipynb_checkpoints) are no class and no image; a symlink loop
// is a one-line error naming it. A test split takes the training split's normalisation (a
// folder's is computed per split) and must match its image shape.
TEST(FolderReader, HiddenEntriesLoopsAndTheTrainingSplitsNormalisation) {
  TempDir dir;
  std::vector<uint8_t> dark(4 * 4 * 3, 40), white(4 * 4 * 3, 255);
  fs::create_directories(dir / "train/a");
  fs::create_directories(dir / "train/.git");
  fs::create_directories(dir / "test/a");
  ASSERT_TRUE(stbi_write_png((dir / "train/a/x.png").c_str(), 4, 4, 3, dark.data(), 12));
  ASSERT_TRUE(stbi_write_png((dir / "train/a/._x.png").c_str(), 4, 4, 3, white.data(), 12));
  ASSERT_TRUE(stbi_write_png((dir / "train/.git/y.png").c_str(), 4, 4, 3, white.data(), 12));
  ASSERT_TRUE(stbi_write_png((dir / "test/a/z.png").c_str(), 4, 4, 3, white.data(), 12));
  DataOptions opt;
  opt.image_size = 4;
  const Dataset train = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt);
  EXPECT_EQ(train.size, 1);
  EXPECT_EQ(train.class_names, std::vector<std::string>{"a"});
  Dataset test = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Test, opt);
  EXPECT_NE(test.mean, train.mean);  // its own statistics, as read
  match_training_split(train, &test);
  EXPECT_EQ(test.mean, train.mean);
  EXPECT_EQ(test.std, train.std);
  opt.image_size = 5;
  Dataset bigger = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Test, opt);
  expect_error([&] { match_training_split(train, &bigger); },
               {"folder/test: expected 3x4x4 images like folder/train, found 3x5x5"});

  fs::create_directories(dir / "train/unlabeled");  // empty: named, not the folder above it
  expect_error([&] { load_dataset(parse_data_spec("folder:" + (dir / "train")), Split::Unlabeled, opt); },
               {"train/unlabeled: expected images for the unlabeled split", "found none"});

  fs::create_directory_symlink(dir / "train/loop", dir / "train/loop");
  expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt); },
               {"train/loop", "expected a readable file or folder"});
}

// --image-size: folder data only (other kinds have their own size), 0 or 8..1024.
TEST(FolderReader, ImageSizeIsForFoldersOnly) {
  EXPECT_EQ(data_options(parse_data_spec("folder:/x"), 0).image_size, 32);
  EXPECT_EQ(data_options(parse_data_spec("folder:/x"), 96).image_size, 96);
  EXPECT_EQ(data_options(parse_data_spec("cifar10:/x"), 0).image_size, 32);
  auto usage = [](const std::string& spec, int size) {
    try {
      data_options(parse_data_spec(spec), size);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(usage("cifar10:/x", 64), "--image-size 64: applies to folder data; cifar10 images have their own size");
  EXPECT_EQ(usage("folder:/x", 4), "--image-size: expected 0 (32) or a side from 8 to 1024, found 4");
}

// Shrinking to 32 from every side between 33 and 130 (the fuzzer found a 43x43 PNG aborting
// inside stb_image_resize's triangle filter), and a flat image stays flat.
TEST(ImageFolder, ResizesEverySideWithoutAborting) {
  TempDir dir;
  fs::create_directories(dir / "train/flat");
  std::vector<uint8_t> grey(130 * 130, 100);
  for (int side = 33; side <= 130; ++side) {
    const std::string file = (dir / "train/flat/a.png");
    ASSERT_TRUE(stbi_write_png(file.c_str(), side, side, 1, grey.data(), side));
    DataOptions opt;
    opt.channels = 1;
    opt.image_size = 32;
    const Dataset d = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, opt);
    ASSERT_EQ(d.size, 1) << side;
    EXPECT_NEAR(d.image(0)[0], 100, 1) << side;
    EXPECT_NEAR(d.image(0)[32 * 32 - 1], 100, 1) << side;
  }
}

namespace {
// A flat w x h grey PNG of value v (directories created).
void write_grey_png(const std::string& path, int w, int h, uint8_t v) {
  fs::create_directories(fs::path(path).parent_path());
  const std::vector<uint8_t> px(size_t(w) * h, v);
  ASSERT_TRUE(stbi_write_png(path.c_str(), w, h, 1, px.data(), w));
}
DataOptions grey(int image_size) {
  DataOptions opt;
  opt.channels = 1;
  opt.image_size = image_size;
  return opt;
}
}  // namespace

// Extensions match whatever their case, and .jpeg counts as well as .jpg.
TEST(FolderReader, ExtensionsAreCaseInsensitiveAndIncludeJpeg) {
  TempDir dir;
  std::vector<uint8_t> px(4 * 4, 90);
  fs::create_directories(dir / "cls");
  ASSERT_TRUE(stbi_write_jpg((dir / "cls/a.jpeg").c_str(), 4, 4, 1, px.data(), 95));
  ASSERT_TRUE(stbi_write_png((dir / "cls/b.PNG").c_str(), 4, 4, 1, px.data(), 4));
  EXPECT_EQ(load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(4)).size, 2);
}

// Classes are numbered in sorted sub-folder order and files are read in sorted name order,
// whatever order the directory lists them in (created here out of order). Image values tell
// which file landed where.
TEST(FolderReader, ClassesAndFilesInSortedOrder) {
  TempDir dir;
  const std::vector<std::string> classes = {"zeta", "alpha", "mu", "beta", "omega", "delta", "kappa", "eta"};
  for (size_t c = 0; c < classes.size(); ++c) write_grey_png(dir / (classes[c] + "/x.png"), 2, 2, uint8_t(10 * c));
  for (const char* f : {"c.png", "a.png", "d.png", "b.png"})
    write_grey_png(dir / ("mu/" + std::string(f)), 2, 2, uint8_t(200 + f[0] - 'a'));
  const Dataset d = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(2));
  EXPECT_EQ(d.class_names,
            (std::vector<std::string>{"alpha", "beta", "delta", "eta", "kappa", "mu", "omega", "zeta"}));
  ASSERT_EQ(d.size, 12);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 6, 7}));
  // alpha (created second) first, then mu's a, b, c, d, x; zeta (created first) last.
  const std::vector<int> first_pixel = {10, 30, 50, 70, 60, 200, 201, 202, 203, 20, 40, 0};
  for (int64_t i = 0; i < d.size; ++i) EXPECT_NEAR(d.image(i)[0], first_pixel[size_t(i)], 1) << i;
}

// A tall image is centre-cropped vertically (the older test crops a wide one): 3 wide, 6 high,
// rows 2-3 grey 200, the rest black; the centre square is rows 1-3 -> 0, 200, 200.
TEST(FolderReader, TallImageIsCroppedVertically) {
  TempDir dir;
  std::vector<uint8_t> px(3 * 6, 0);
  for (int x = 0; x < 3; ++x) px[size_t(2 * 3 + x)] = px[size_t(3 * 3 + x)] = 200;
  fs::create_directories(dir / "cls");
  ASSERT_TRUE(stbi_write_png((dir / "cls/tall.png").c_str(), 3, 6, 1, px.data(), 3));
  const Dataset d = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(3));
  for (int x = 0; x < 3; ++x) {
    EXPECT_NEAR(d.image(0)[0 * 3 + x], 0, 1);
    EXPECT_NEAR(d.image(0)[1 * 3 + x], 200, 1);
    EXPECT_NEAR(d.image(0)[2 * 3 + x], 200, 1);
  }
}

// Options outside what the reader supports are errors naming the value: 2 channels (grey +
// alpha would decode silently) and an image size of 0.
TEST(FolderReader, UnsupportedOptionsAreErrors) {
  TempDir dir;
  write_grey_png(dir / "cls/a.png", 2, 2, 1);
  DataOptions two = grey(2);
  two.channels = 2;
  expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, two); },
               {dir.path(), "expected 1 or 3 channels, found 2"});
  expect_error([&] { load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(0)); },
               {dir.path(), "expected an image size >= 1, found 0"});
}

// The unlabeled split of the split layout: without DIR/unlabeled it is train's images; with it,
// the images directly in DIR/unlabeled (first) and in its sub-folders.
TEST(FolderReader, UnlabeledSplitSources) {
  TempDir dir;
  write_grey_png(dir / "train/cat/a.png", 2, 2, 1);
  write_grey_png(dir / "train/dog/b.png", 2, 2, 2);
  write_grey_png(dir / "test/cat/c.png", 2, 2, 3);
  EXPECT_EQ(load_dataset(parse_data_spec("folder:" + dir.path()), Split::Unlabeled, grey(2)).size, 2);
  write_grey_png(dir / "unlabeled/more/y.png", 2, 2, 50);
  write_grey_png(dir / "unlabeled/more/z.png", 2, 2, 60);
  write_grey_png(dir / "unlabeled/x.png", 2, 2, 40);
  const Dataset u = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Unlabeled, grey(2));
  ASSERT_EQ(u.size, 3);
  EXPECT_FALSE(u.labeled());
  EXPECT_NEAR(u.image(0)[0], 40, 1);
  EXPECT_NEAR(u.image(2)[0], 60, 1);
}

// Without train/test folders, DIR/unlabeled beside the class folders is the unlabeled split's
// source (data/read_folder.cpp), not a third class: the train split has cat and dog only.
TEST(FolderReader, UnlabeledFolderBesideTheClassesIsNotAClass) {
  TempDir dir;
  write_grey_png(dir / "cat/a.png", 2, 2, 1);
  write_grey_png(dir / "dog/b.png", 2, 2, 2);
  write_grey_png(dir / "unlabeled/c.png", 2, 2, 3);
  const Dataset train = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(2));
  EXPECT_EQ(train.num_classes, 2);
  EXPECT_EQ(train.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(train.size, 2);
  EXPECT_EQ(train.labels, (std::vector<int32_t>{0, 1}));
  const Dataset unlabeled = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Unlabeled, grey(2));
  ASSERT_EQ(unlabeled.size, 1);
  EXPECT_NEAR(unlabeled.image(0)[0], 3, 1);
}

// A folder with no class sub-folders, and a class sub-folder with no image, are errors saying so.
TEST(FolderReader, NoClassesOrAnEmptyClassAreErrors) {
  TempDir dir;
  fs::create_directories(dir / "empty");
  expect_error([&] { load_dataset(parse_data_spec("folder:" + (dir / "empty")), Split::Train, grey(2)); },
               {dir / "empty", "one sub-folder per class", "no sub-folders"});
  write_grey_png(dir / "two/cat/a.png", 2, 2, 1);
  fs::create_directories(dir / "two/dog");
  write_bytes(dir / "two/dog/readme.txt", {'x'});
  expect_error([&] { load_dataset(parse_data_spec("folder:" + (dir / "two")), Split::Train, grey(2)); },
               {dir / "two/dog", "at least one .png, .jpg, .jpeg or .bmp image", "found none"});
}

// A folder has no published constants: its mean / std are measured on the images loaded. One
// 2x2 grey image of pixels {0, 0, 0, 255}: mean 0.25, population std sqrt(0.25 * 0.75).
TEST(FolderReader, NormalisationIsMeasuredOnTheImages) {
  TempDir dir;
  fs::create_directories(dir / "cls");
  const std::vector<uint8_t> px = {0, 0, 0, 255};
  ASSERT_TRUE(stbi_write_png((dir / "cls/a.png").c_str(), 2, 2, 1, px.data(), 2));
  const Dataset d = load_dataset(parse_data_spec("folder:" + dir.path()), Split::Train, grey(2));
  ASSERT_EQ(d.mean.size(), 1u);
  EXPECT_NEAR(d.mean[0], 0.25, 2e-3);
  EXPECT_NEAR(d.std[0], std::sqrt(0.25 * 0.75), 2e-3);
}

// ---- the Debian package ----------------------------------------------------------------

// Per-channel statistics in pixel / 255: a varying channel's population std, and a constant
// channel's std 1 (its mean still subtracted), never 0, which would divide by zero.
TEST(ChannelStats, ConstantChannelKeepsStdOne) {
  Dataset d;
  d.size = 2;
  d.channels = 2;
  d.height = 1;
  d.width = 2;
  d.images = {0, 255, 7, 7,    // image 0: channel 0 = {0, 255}, channel 1 = {7, 7}
              0, 255, 7, 7};   // image 1: the same
  std::vector<float> mean, std;
  channel_stats(d, &mean, &std);
  ASSERT_EQ(mean.size(), 2u);
  EXPECT_FLOAT_EQ(mean[0], 0.5f);
  EXPECT_FLOAT_EQ(std[0], 0.5f);
  EXPECT_FLOAT_EQ(mean[1], 7.0f / 255.0f);
  EXPECT_EQ(std[1], 1.0f);
}

// The named datasets normalise with the published per-channel constants (pixel / 255), not
// with their loaded images' statistics: each kind is loaded from a one-image file here and its
// constants compared with the literature's values (torchvision examples and papers).
TEST(ChannelStats, NamedDatasetsUsePublishedConstants) {
  TempDir dir;
  using V = std::vector<float>;
  const auto expect_stats = [](const Dataset& d, const V& mean, const V& std) {
    ASSERT_EQ(d.mean.size(), mean.size()) << d.name;
    ASSERT_EQ(d.std.size(), std.size()) << d.name;
    for (size_t c = 0; c < mean.size(); ++c) {
      EXPECT_FLOAT_EQ(d.mean[c], mean[c]) << d.name << " channel " << c;
      EXPECT_FLOAT_EQ(d.std[c], std[c]) << d.name << " channel " << c;
    }
  };
  write_mnist(dir / "idx", "t10k", 1, false);
  expect_stats(load_dataset(parse_data_spec("mnist:" + (dir / "idx")), Split::Test), {0.1307f}, {0.3081f});
  expect_stats(load_dataset(parse_data_spec("fashion-mnist:" + (dir / "idx")), Split::Test), {0.2860f}, {0.3530f});
  write_bytes(dir / "c10/test_batch.bin", cifar_records({{1}}, 0));
  expect_stats(load_dataset(parse_data_spec("cifar10:" + (dir / "c10")), Split::Test),
               {0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f});
  write_bytes(dir / "c100/test.bin", cifar_records({{1, 1}}, 0));
  expect_stats(load_dataset(parse_data_spec("cifar100:" + (dir / "c100")), Split::Test),
               {0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f});
  write_bytes(dir / "stl/test_X.bin", stl_images(1));
  write_bytes(dir / "stl/test_y.bin", {1});
  expect_stats(load_dataset(parse_data_spec("stl10:" + (dir / "stl")), Split::Test),
               {0.4467f, 0.4398f, 0.4066f}, {0.2603f, 0.2566f, 0.2713f});
}

TEST(FashionMnist, LoadsFromDebianPackageWithNoPath) {
  if (!fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashionMnistDir << " (Debian package dataset-fashion-mnist)";
  const Dataset train = load_dataset(parse_data_spec("fashion-mnist"), Split::Train);
  const Dataset test = load_dataset(parse_data_spec("fashion-mnist"), Split::Test);
  EXPECT_EQ(train.size, 60000);
  EXPECT_EQ(test.size, 10000);
  EXPECT_EQ(train.height, 28);
  EXPECT_EQ(train.width, 28);
  for (int64_t n : train.class_counts()) EXPECT_EQ(n, 6000);
  for (int64_t n : test.class_counts()) EXPECT_EQ(n, 1000);
  // The built-in normalisation constants are the training images' own statistics.
  std::vector<float> mean, std;
  channel_stats(train, &mean, &std);
  EXPECT_NEAR(mean[0], train.mean[0], 1e-4);
  EXPECT_NEAR(std[0], train.std[0], 1e-4);
}
