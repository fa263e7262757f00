// safetensors checkpoints (engine/checkpoint.cpp): round trips (empty tensors included), what
// the writer refuses, every way a file can be broken giving an Error that names what is wrong,
// and loading arenas (prefixes, the list of problems). Files are generated here.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>

#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "tests/thrown.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("tessera_ckpt_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::vector<uint8_t> slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  // A file from a header written by hand plus `data_bytes` zero bytes of data.
  static std::vector<uint8_t> handmade(const std::string& header, size_t data_bytes) {
    std::string b(8, '\0');
    for (int i = 0; i < 8; ++i) b[static_cast<size_t>(i)] = static_cast<char>(header.size() >> (8 * i));
    b += header;
    b.append(data_bytes, '\0');
    return std::vector<uint8_t>(b.begin(), b.end());
  }
  static std::string error_of(std::vector<uint8_t> bytes) {
    try {
      SafetensorsFile::parse(std::move(bytes), "test.safetensors");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

// Substring check with the message in the failure output.
#define EXPECT_HAS(text, piece) EXPECT_NE(std::string(text).find(piece), std::string::npos) << (text)

TEST_F(CheckpointTest, RoundTripAllDtypesAndMetadata) {
  SafetensorsWriter w;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, 7.0f};
  w.add_f32("conv.weight", {2, 3}, a.data());
  w.add_i64("bn.num_batches_tracked", {}, {123456789012LL});
  w.add_i32("labels", {3}, {7, -1, 0});
  w.add_u8("mask", {2, 2}, {0, 1, 255, 3});
  w.add_metadata("model", "{\"arch\": \"resnet18\"}");
  w.write(path("a.safetensors"));

  const std::vector<uint8_t> bytes = slurp(path("a.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
  EXPECT_EQ((8 + n) % 8, 0u) << "data region should start 8-byte aligned";
  EXPECT_EQ(bytes.size(), 8 + n + 6 * 4 + 8 + 3 * 4 + 4);

  const SafetensorsFile f = SafetensorsFile::read(path("a.safetensors"));
  const std::vector<int64_t> shape = {2, 3};
  EXPECT_EQ(f.f32("conv.weight", &shape), a);
  EXPECT_EQ(f.i64("bn.num_batches_tracked"), std::vector<int64_t>{123456789012LL});
  EXPECT_TRUE(f.entry("bn.num_batches_tracked").shape.empty());
  EXPECT_EQ(f.i32("labels"), (std::vector<int32_t>{7, -1, 0}));
  EXPECT_EQ(f.u8("mask"), (std::vector<uint8_t>{0, 1, 255, 3}));
  EXPECT_EQ(f.metadata("model"), "{\"arch\": \"resnet18\"}");
  EXPECT_EQ(f.tensors().size(), 4u);
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointTest, TypedReadsNameTheMismatch) {
  SafetensorsWriter w;
  const float x[4] = {1, 2, 3, 4};
  w.add_f32("w", {4}, x);
  w.write(path("b.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("b.safetensors"));
  try {
    f.i64("w");
    FAIL() << "reading F32 as I64 should fail";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "tensor 'w' is F32, expected I64");
  }
  const std::vector<int64_t> shape = {2, 2};
  try {
    f.f32("w", &shape);
    FAIL() << "a wrong shape should fail";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "tensor 'w' has shape [4], expected [2, 2]");
  }
  try {
    f.f32("nope");
    FAIL() << "a missing tensor should fail";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "no tensor named 'nope'");
  }
}

TEST_F(CheckpointTest, TruncatedFilesAreErrors) {
  SafetensorsWriter w;
  std::vector<float> x(100, 1.0f);
  w.add_f32("first", {100}, x.data());
  w.add_f32("second", {10, 10}, x.data());
  w.write(path("c.safetensors"));
  const std::vector<uint8_t> full = slurp(path("c.safetensors"));
  EXPECT_EQ(error_of(full), "");
  // Cut inside the length field, inside the header, inside the last tensor, one byte short.
  for (size_t keep : {size_t{0}, size_t{5}, size_t{40}, full.size() - 200, full.size() - 1}) {
    const std::string msg = error_of(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(keep)));
    EXPECT_FALSE(msg.empty()) << "a file cut to " << keep << " bytes was accepted";
    EXPECT_HAS(msg, "test.safetensors");
    if (keep >= full.size() - 200) {
      EXPECT_HAS(msg, "tensor 'second'");
    }
  }
  // Through the file API too.
  fs::resize_file(path("c.safetensors"), full.size() - 3);
  EXPECT_THROW(SafetensorsFile::read(path("c.safetensors")), Error);
}

// A header cut short of its length field by fewer than the 8 bytes of that field is still
// caught by the length check, not parsed from the bytes that follow the vector.
TEST_F(CheckpointTest, HeaderCutJustShortOfItsLengthIsAnError) {
  SafetensorsWriter w;
  const float x[2] = {1, 2};
  w.add_f32("w", {2}, x);
  w.write(path("l.safetensors"));
  const std::vector<uint8_t> full = slurp(path("l.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | full[static_cast<size_t>(i)];
  for (size_t missing = 1; missing <= 8; ++missing) {
    const size_t keep = static_cast<size_t>(8 + n - missing);
    const std::string msg = error_of(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(keep)));
    EXPECT_HAS(msg, cat("header length field says ", n, " bytes but the file has ", n - missing, " bytes after it"));
  }
}

// Asking for a metadata key the file does not have is an Error naming the key and the file.
TEST_F(CheckpointTest, MissingMetadataKeyIsNamed) {
  SafetensorsWriter w;
  w.add_metadata("model", "resnet18");
  w.write(path("m.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("m.safetensors"));
  EXPECT_EQ(f.metadata("model"), "resnet18");
  try {
    f.metadata("step");
    FAIL() << "an absent metadata key was read";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "checkpoint '" + path("m.safetensors") + "': no metadata key 'step'");
  }
}

// One part's metadata of several (byol's optimizers and teachers): the keys under a prefix,
// cut off; a key that only shares the prefix's first letters is not taken.
TEST_F(CheckpointTest, MetadataUnderAPrefix) {
  SafetensorsWriter w;
  w.add_metadata("optim.backbone.steps", "7");
  w.add_metadata("optim.backbone2.steps", "8");
  w.add_metadata("backbone.step", "9");
  w.write(path("m.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("m.safetensors"));
  const std::map<std::string, std::string> want{{"steps", "7"}};
  EXPECT_EQ(f.metadata_under("optim.backbone."), want);
  EXPECT_TRUE(f.metadata_under("nothing.").empty());
  EXPECT_EQ(f.metadata_under("").size(), 3u);
}

TEST_F(CheckpointTest, CorruptedHeadersAreErrors) {
  SafetensorsWriter w;
  const float x[2] = {1, 2};
  w.add_f32("w", {2}, x);
  w.write(path("d.safetensors"));
  std::vector<uint8_t> bytes = slurp(path("d.safetensors"));

  std::vector<uint8_t> broken = bytes;
  broken[8] = 'x';  // the opening brace of the JSON
  EXPECT_HAS(error_of(broken), "not valid JSON");

  broken = bytes;
  broken[7] = 0x40;  // a header length of about 2^62
  EXPECT_HAS(error_of(broken), "header length field says");

  EXPECT_HAS(error_of(handmade("[1, 2, 3]", 0)), "expected an object");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})", 4)),
             "tensor 'w': dtype 'F16' is not one of");
  EXPECT_HAS(error_of(handmade(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8)), "tensor 'w': missing string field 'dtype'");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8)),
             "not a list of non-negative integers");
  EXPECT_HAS(error_of(handmade(R"({"__metadata__": {"a": 1}})", 0)), "__metadata__ value for 'a'");
}

TEST_F(CheckpointTest, BadOffsetsAreErrors) {
  // Size disagreeing with dtype and shape.
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8)),
             "tensor 'w': data_offsets [0, 8] hold 8 bytes, expected 12 for F32 [3]");
  // Outside the file.
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 8)),
             "fall outside the 8 data bytes");
  // begin > end, and negative offsets.
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 2]}})", 8)), "fall outside");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [-2, 0]}})", 8)),
             "data_offsets must be two non-negative integers");
  // Overlap.
  EXPECT_HAS(error_of(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12)),
             "tensor 'b': data begins at byte 4, expected 8 (overlaps 'a')");
  // A gap, and bytes nobody owns at the end.
  EXPECT_HAS(error_of(handmade(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8)),
             "tensor 'a': data begins at byte 4, expected 0 (a gap before it)");
  EXPECT_HAS(error_of(handmade(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8)),
             "tensors end at data byte 4 but the file has 8 data bytes");
}

TEST_F(CheckpointTest, WriteIsAtomicAndReportsFailures) {
  SafetensorsWriter w;
  const float x[1] = {42};
  w.add_f32("w", {1}, x);
  w.write(path("e.safetensors"));
  SafetensorsWriter w2;
  const float y[2] = {1, 2};
  w2.add_f32("v", {2}, y);
  w2.write(path("e.safetensors"));  // replaces the old file
  const SafetensorsFile f = SafetensorsFile::read(path("e.safetensors"));
  EXPECT_FALSE(f.has("w"));
  EXPECT_EQ(f.f32("v"), (std::vector<float>{1, 2}));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
  EXPECT_THROW(w.write(path("no/such/dir/x.safetensors")), Error);
  EXPECT_THROW(SafetensorsFile::read(path("missing.safetensors")), Error);
}

// Two small tables standing in for a model: parameters and BN buffers.
struct TinyModel {
  ParamTable params, buffers;
  Arena p, b;
  explicit TinyModel(int64_t channels) {
    params.add("conv.weight", Shape{channels, 3, 3, 3}, ParamKind::ConvWeight);
    params.add("bn.weight", Shape{channels}, ParamKind::BnWeight);
    buffers.add("bn.running_mean", Shape{channels}, ParamKind::BnRunningMean);
    buffers.add("bn.running_var", Shape{channels}, ParamKind::BnRunningVar);
    buffers.add("bn.num_batches_tracked", Shape{1}, ParamKind::BnNumBatches);
    p = Arena(params, Device::CPU);
    b = Arena(buffers, Device::CPU);
  }
};

// The bits of each float: a round trip must be exact, -0.0 and NaN payloads included.
std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}
std::vector<uint32_t> bits(const Tensor& t) { return bits(to_host_f32(t)); }

// Every slot of `b` equal, bit for bit, to the same slot of `a`; failures name the slot.
void expect_same_slots(const Arena& a, const Arena& b) {
  ASSERT_EQ(a.table().size(), b.table().size());
  for (size_t i = 0; i < a.table().size(); ++i) EXPECT_EQ(bits(b.slot(i)), bits(a.slot(i))) << a.table()[i].name;
}

TEST_F(CheckpointTest, ArenasRoundTripUnderAPrefixWithInt64Counters) {
  TinyModel a(4);
  std::vector<float> values(static_cast<size_t>(a.params.arena_numel()));
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i);
  from_host(a.p.all(), values);
  // Buffers unlike anything a fresh arena (zeros) or init (mean 0, var 1, count 0) holds, and
  // unlike each other, so a loader that skips them, or puts one in the other's place, fails.
  from_host(a.b.slot("bn.running_mean"), std::vector<float>{-0.375f, 1e-20f, -0.0f, 3.0e7f});
  from_host(a.b.slot("bn.running_var"), std::vector<float>{0.0625f, 2.5f, 1e-30f, 7.75f});
  fill_value(a.b.slot("bn.num_batches_tracked"), 1234.0f);
  SafetensorsWriter w;
  add_arena(w, a.p, "teacher.");
  add_arena(w, a.b, "teacher.");
  w.write(path("f.safetensors"));

  const SafetensorsFile f = SafetensorsFile::read(path("f.safetensors"));
  EXPECT_EQ(f.entry("teacher.bn.num_batches_tracked").dtype, StDType::I64);
  EXPECT_EQ(f.i64("teacher.bn.num_batches_tracked"), std::vector<int64_t>{1234});

  TinyModel c(4);
  c.p.write_canaries();
  c.b.write_canaries();
  load_arenas(f, {&c.p, &c.b}, "teacher.");
  EXPECT_TRUE(c.p.broken_canaries().empty()) << "loading wrote into the gaps between slots";
  EXPECT_TRUE(c.b.broken_canaries().empty()) << "loading wrote into the gaps between buffer slots";
  expect_same_slots(a.p, c.p);
  expect_same_slots(a.b, c.b);
  EXPECT_EQ(to_host_f32(c.b.slot("bn.num_batches_tracked")), std::vector<float>{1234.0f});
  // Under another prefix nothing matches.
  EXPECT_THROW(load_arenas(f, {&c.p, &c.b}, "student."), Error);
}

// A model whose BatchNorm statistics were moved by training (train-mode forwards), saved and
// loaded back: every running mean, running variance and batch count is bit-identical, into a
// model freshly initialised (where a loader that skipped the buffers would leave the
// defaults) and into one rebuilt from the file; and eval mode, which reads those statistics,
// gives the same bits.
TEST_F(CheckpointTest, ModelRoundTripKeepsTrainedBatchNormStatistics) {
  ModelSpec spec;
  spec.arch = "resnet18";
  spec.stem = "cifar";
  spec.in_channels = 1;
  spec.width = 4;
  spec.num_classes = 3;
  auto a = make_model(spec, Device::CPU);
  a->init(21);
  const Shape shape{4, 1, 8, 8};
  std::vector<float> input(static_cast<size_t>(shape.numel()));
  kernels::PhiloxState rng(7, kernels::philox_subsequence(kernels::kStreamTest, 31), 0);
  for (float& x : input) x = 2.0f * rng.uniform() - 0.5f;  // mean 0.5: the running means move
  Workspace ws(Device::CPU);
  constexpr int kTrainForwards = 3;
  for (int k = 0; k < kTrainForwards; ++k) {
    ws.reset();
    Graph g(ws);
    NoGradScope no_grad(g);
    const Tensor x = ws.alloc(shape);
    from_host(x, input);
    a->forward(g, g.input(x, "input"), /*train=*/true);
  }
  // The statistics really are away from their defaults, in every BN layer.
  const ParamTable& bt = a->buffer_table();
  int bn_layers = 0;
  for (size_t i = 0; i < bt.size(); ++i) {
    const std::vector<float> v = to_host_f32(a->buffers().slot(i));
    if (bt[i].kind == ParamKind::BnRunningMean) {
      ++bn_layers;
      EXPECT_TRUE(std::any_of(v.begin(), v.end(), [](float m) { return m != 0.0f; })) << bt[i].name;
    } else if (bt[i].kind == ParamKind::BnRunningVar) {
      EXPECT_TRUE(std::any_of(v.begin(), v.end(), [](float m) { return m != 1.0f; })) << bt[i].name;
    } else if (bt[i].kind == ParamKind::BnNumBatches) {
      EXPECT_EQ(v, std::vector<float>{static_cast<float>(kTrainForwards)}) << bt[i].name;
    }
  }
  EXPECT_EQ(bn_layers, 20);  // resnet18: bn1, 16 in the blocks, 3 downsample

  SafetensorsWriter w;
  add_model(w, *a, "teacher.");
  w.write(path("trained.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("trained.safetensors"));

  auto fresh = make_model(spec, Device::CPU);  // initialised: default statistics
  load_model(f, *fresh, "teacher.");
  auto rebuilt = load_model(f, Device::CPU, "teacher.");
  for (const Model* b : {fresh.get(), rebuilt.get()}) {
    expect_same_slots(a->params(), b->params());
    expect_same_slots(a->buffers(), b->buffers());
  }

  const auto eval = [&](Model& m) {
    ws.reset();
    Graph g(ws);
    NoGradScope no_grad(g);
    const Tensor x = ws.alloc(shape);
    from_host(x, input);
    return bits(m.forward(g, g.input(x, "input"), /*train=*/false)->value);
  };
  const std::vector<uint32_t> want = eval(*a);
  EXPECT_EQ(eval(*fresh), want) << "eval-mode outputs differ after loading into an initialised model";
  EXPECT_EQ(eval(*rebuilt), want) << "eval-mode outputs differ after rebuilding from the file";
}

TEST_F(CheckpointTest, LoadListsMissingWrongShapeAndUnexpectedTensors) {
  TinyModel a(4);
  SafetensorsWriter w;
  add_arena(w, a.p);  // parameters only: the buffers will be missing
  const float extra[1] = {0};
  w.add_f32("head.weight", {1}, extra);
  w.write(path("g.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("g.safetensors"));

  TinyModel wide(8);
  fill_value(wide.p.slot("bn.weight"), 5.0f);
  try {
    load_arenas(f, {&wide.p, &wide.b});
    FAIL() << "a mismatching checkpoint was loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_HAS(msg, "(6 problems)");
    EXPECT_HAS(msg, "'conv.weight' has shape [4, 3, 3, 3], expected [8, 3, 3, 3]");
    EXPECT_HAS(msg, "'bn.weight' has shape [4], expected [8]");
    EXPECT_HAS(msg, "missing 'bn.running_mean'");
    EXPECT_HAS(msg, "missing 'bn.running_var'");
    EXPECT_HAS(msg, "missing 'bn.num_batches_tracked'");
    EXPECT_HAS(msg, "unexpected 'head.weight' [1]");
  }
  // Nothing was written into the arenas.
  EXPECT_EQ(to_host_f32(wide.p.slot("bn.weight")), std::vector<float>(8, 5.0f));

  // Parameters alone match when the extra tensor is allowed.
  TinyModel same(4);
  load_arenas(f, {&same.p}, "", /*allow_unexpected=*/true);
  EXPECT_THROW(load_arenas(f, {&same.p}, "", false), Error);
}

// A NaN or infinity in a checkpoint (edited or damaged after it was written: the programs never
// save one) is refused at load, naming the tensor and element, before anything is written.
TEST_F(CheckpointTest, LoadRefusesNonFiniteValues) {
  TinyModel a(4);
  fill_value(a.p.slot("conv.weight"), std::numeric_limits<float>::quiet_NaN());
  fill_value(a.b.slot("bn.running_var"), std::numeric_limits<float>::infinity());
  SafetensorsWriter w;
  add_arena(w, a.p);
  add_arena(w, a.b);
  w.write(path("nan.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("nan.safetensors"));
  TinyModel b(4);
  fill_value(b.p.slot("bn.weight"), 5.0f);
  const std::string e = thrown([&] { load_arenas(f, {&b.p, &b.b}); });
  EXPECT_HAS(e, "(2 problems)");
  EXPECT_HAS(e, "'conv.weight' element 0 is nan");
  EXPECT_HAS(e, "'bn.running_var' element 0 is inf");
  EXPECT_HAS(e, "the file was changed or damaged");
  EXPECT_EQ(to_host_f32(b.p.slot("bn.weight")), std::vector<float>(4, 5.0f));
}

// The writer refuses what would make an unreadable or ambiguous file: an empty name, the
// reserved "__metadata__", a name given twice, a negative dim, and data whose size disagrees
// with dtype and shape. Each is an Error naming the tensor.
TEST_F(CheckpointTest, WriterRefusesBadNamesAndSizes) {
  SafetensorsWriter w;
  const float x[2] = {1, 2};
  w.add_f32("w", {2}, x);
  const auto error_of_add = [&w](const std::function<void()>& add) -> std::string {
    try {
      add();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_HAS(error_of_add([&] { w.add_f32("", {2}, x); }), "invalid tensor name ''");
  EXPECT_HAS(error_of_add([&] { w.add_f32("__metadata__", {2}, x); }), "invalid tensor name '__metadata__'");
  EXPECT_HAS(error_of_add([&] { w.add_f32("w", {2}, x); }), "tensor 'w' added twice");
  EXPECT_HAS(error_of_add([&] { w.add_u8("n", {-1, 2}, {}); }), "tensor 'n' has a negative dim in [-1, 2]");
  EXPECT_HAS(error_of_add([&] { w.add_i64("c", {3}, {1, 2}); }), "tensor 'c': 16 bytes given for I64 [3]");
  // None of the refused tensors was kept.
  w.write(path("h.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("h.safetensors"));
  EXPECT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.f32("w"), (std::vector<float>{1, 2}));
}

// Tensors with a zero dim hold no bytes but keep their shape (an empty label list, a model
// with no classes yet): both the writer and the reader accept them, first, last and between
// others. An empty tensor starts where the next one does: the reader's tiling check once broke
// such ties by where the names sat in memory, and refused a file whose header listed the
// non-empty tensor first as an overlap.
TEST_F(CheckpointTest, EmptyTensorsRoundTrip) {
  SafetensorsWriter w;
  const float x[2] = {5, 6};
  for (int i = 0; i < 6; ++i) {
    w.add_f32(cat("empty", i), {2, 0}, x);
    w.add_f32(cat("after", i), {2}, x);
  }
  w.add_i32("none", {0}, {});
  w.write(path("i.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("i.safetensors"));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(f.entry(cat("empty", i)).shape, (std::vector<int64_t>{2, 0}));
    EXPECT_TRUE(f.f32(cat("empty", i)).empty());
    EXPECT_EQ(f.f32(cat("after", i)), (std::vector<float>{5, 6}));
  }
  EXPECT_EQ(f.entry("none").shape, std::vector<int64_t>{0});
  EXPECT_TRUE(f.i32("none").empty());
  // Other writers list tensors in orders of their own (the safetensors library sorts them):
  // here each empty tensor comes after the one it shares its offset with, in eight pairs.
  std::string header = "{";
  for (int i = 0; i < 8; ++i)
    header += cat(i ? ", " : "", "\"a", i, "\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [", 4 * i, ", ",
                  4 * i + 4, "]}, \"b", i, "\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [", 4 * i, ", ",
                  4 * i, "]}");
  EXPECT_EQ(error_of(handmade(header + "}", 32)), "");
}

// A shape whose element count, or its byte count, wraps around 64 bits (2^62 * 4 U8 elements
// "fit" in zero bytes once it wraps, and so do 2^62 F32 values) is refused as larger than the
// file, before anything is allocated for it.
TEST_F(CheckpointTest, ShapeLargerThanTheFileIsAnError) {
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "U8", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})",
                               0)),
             "tensor 'w': shape [4611686018427387904,4] is larger than the file");
  // The element count fits 64 bits but its bytes wrap: 2^62 F32 values, 2^61 I64 values.
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})",
                               0)),
             "tensor 'w': shape [4611686018427387904] is larger than the file");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "I64", "shape": [2305843009213693952], "data_offsets": [0, 0]}})",
                               0)),
             "tensor 'w': shape [2305843009213693952] is larger than the file");
}

// The remaining header defects, each named: an entry that is not an object, no shape, a
// __metadata__ that is not an object, and data_offsets with a third number.
TEST_F(CheckpointTest, MalformedEntriesAreNamed) {
  EXPECT_HAS(error_of(handmade(R"({"w": [1, 2]})", 0)), "tensor 'w': entry is not an object");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4)),
             "tensor 'w': missing array field 'shape'");
  EXPECT_HAS(error_of(handmade(R"({"__metadata__": "resnet18"})", 0)), "__metadata__ is not an object of strings");
  EXPECT_HAS(error_of(handmade(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 4)),
             "tensor 'w': data_offsets must be two non-negative integers");
}

// A bare file name is written in the current directory, which is the directory flushed after
// the rename.
TEST_F(CheckpointTest, WritesToARelativePath) {
  const fs::path before = fs::current_path();
  fs::current_path(dir_);
  SafetensorsWriter w;
  const float x[1] = {3};
  w.add_f32("w", {1}, x);
  std::string error;
  try {
    w.write("relative.safetensors");
  } catch (const Error& e) {
    error = e.what();
  }
  fs::current_path(before);
  EXPECT_EQ(error, "");
  EXPECT_EQ(SafetensorsFile::read(path("relative.safetensors")).f32("w"), std::vector<float>{3});
}

// When the final rename fails (here the target is a directory), the Error names both paths and
// the temporary file is removed, not left next to the checkpoints.
TEST_F(CheckpointTest, FailedRenameLeavesNoTemporaryFile) {
  fs::create_directories(path("taken.safetensors/inside"));
  SafetensorsWriter w;
  const float x[1] = {3};
  w.add_f32("w", {1}, x);
  try {
    w.write(path("taken.safetensors"));
    FAIL() << "a checkpoint was renamed over a directory";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "cannot rename");
    EXPECT_HAS(e.what(), "to '" + path("taken.safetensors") + "'");
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1) << "a temporary file was left";
}

// One file holds a model under several prefixes (student and teacher). A strict load of one
// prefix takes that prefix's values and does not count the other prefix's tensors as
// unexpected.
TEST_F(CheckpointTest, StrictLoadIgnoresTensorsUnderOtherPrefixes) {
  TinyModel student(4), teacher(4);
  fill_value(student.p.all(), 1.0f);
  fill_value(teacher.p.all(), 2.0f);
  SafetensorsWriter w;
  add_arena(w, student.p, "student.");
  add_arena(w, teacher.p, "teacher.");
  w.write(path("j.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("j.safetensors"));

  TinyModel loaded(4);
  load_arenas(f, {&loaded.p}, "teacher.");
  expect_same_slots(teacher.p, loaded.p);
}

// A checkpoint from a very different model has many problems; the Error counts them all but
// lists the first eight and says how many more there are, so it stays one readable line.
TEST_F(CheckpointTest, LongProblemListsAreCut) {
  SafetensorsWriter w;
  const float x[1] = {0};
  for (int i = 0; i < 11; ++i) w.add_f32(cat("extra", i), {1}, x);
  w.write(path("k.safetensors"));
  const SafetensorsFile f = SafetensorsFile::read(path("k.safetensors"));
  TinyModel m(4);  // 5 slots, all missing, and 11 unexpected tensors
  try {
    load_arenas(f, {&m.p, &m.b});
    FAIL() << "a checkpoint with nothing the model needs was loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_HAS(msg, "(16 problems)");
    EXPECT_HAS(msg, "missing 'conv.weight'");
    // The map of tensors is sorted: extra0, extra1, extra10, extra2, ...; the 8th problem
    // shown is the 3rd unexpected tensor.
    EXPECT_HAS(msg, "unexpected 'extra10' [1]; and 8 more");
    EXPECT_EQ(msg.find("extra2"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace tessera
