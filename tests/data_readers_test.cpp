// Dataset readers: every format loads files the tests write themselves, and every bad-input
// case (missing file, wrong magic, truncated, label out of range, counts that disagree,
// undecodable image) gives its one-line error naming the file, the expectation and the find.
#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

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
  expect_error(load, {"data_batch_3.bin", "cifar10 train batch", "no readable file"});
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
