// models/: parameter tables against torchvision's and the FixMatch port's (counts and names),
// seeded initialisation, specs, and model checkpoints. Forward passes are tested in
// tests/models_forward_test.cpp and against PyTorch in tests/torchvision_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "models/model.h"

namespace tessera {
namespace {

ModelSpec spec_of(const std::string& arch, int num_classes = 0, const std::string& stem = "imagenet",
                  int in_channels = 3, int width = 64) {
  ModelSpec s;
  s.arch = arch;
  s.num_classes = num_classes;
  s.stem = stem;
  s.in_channels = in_channels;
  s.width = width;
  return s;
}

// Parameter counts printed by `sum(p.numel() for p in torchvision.models.resnetXX().parameters())`
// and (WRN-28-2, 10 classes) by the FixMatch PyTorch port; tensor and buffer counts likewise.
TEST(Models, ParameterTablesMatchTheReferences) {
  struct Ref {
    const char* arch;
    int classes;
    int64_t numel;
    size_t params, buffers;
  };
  const Ref refs[] = {{"resnet18", 1000, 11689512, 62, 60},
                      {"resnet34", 1000, 21797672, 110, 108},
                      {"resnet50", 1000, 25557032, 161, 159},
                      {"wrn-28-2", 10, 1467610, 80, 75}};
  for (const Ref& r : refs) {
    auto m = make_model(spec_of(r.arch, r.classes), Device::CPU, /*initialise=*/false);
    EXPECT_EQ(m->param_table().total_numel(), r.numel) << r.arch;
    EXPECT_EQ(m->param_table().size(), r.params) << r.arch;
    EXPECT_EQ(m->buffer_table().size(), r.buffers) << r.arch;
  }
}

TEST(Models, NamesFollowTorchvisionAndThePort) {
  auto r18 = make_model(spec_of("resnet18", 10), Device::CPU, false);
  const ParamTable& t = r18->param_table();
  EXPECT_EQ(t[0].name, "conv1.weight");
  EXPECT_EQ(t[0].shape, (Shape{64, 3, 7, 7}));
  EXPECT_EQ(t[1].name, "bn1.weight");
  EXPECT_EQ(t[3].name, "layer1.0.conv1.weight");
  EXPECT_GE(t.find("layer2.0.downsample.0.weight"), 0);
  EXPECT_EQ(t[static_cast<size_t>(t.find("layer2.0.downsample.1.bias"))].kind, ParamKind::BnBias);
  EXPECT_LT(t.find("layer1.0.downsample.0.weight"), 0);
  EXPECT_EQ(t[t.size() - 2].name, "fc.weight");
  EXPECT_EQ(t[t.size() - 1].name, "fc.bias");
  EXPECT_EQ(r18->buffer_table()[2].name, "bn1.num_batches_tracked");
  EXPECT_EQ(r18->feature_dim(), 512);

  auto r50 = make_model(spec_of("resnet50"), Device::CPU, false);
  EXPECT_GE(r50->param_table().find("layer1.0.downsample.0.weight"), 0);
  EXPECT_GE(r50->param_table().find("layer4.2.conv3.weight"), 0);
  EXPECT_LT(r50->param_table().find("fc.weight"), 0);
  EXPECT_EQ(r50->feature_dim(), 2048);

  auto cifar = make_model(spec_of("resnet18", 0, "cifar", 1, 16), Device::CPU);
  EXPECT_EQ(cifar->param_table()[0].shape, (Shape{16, 1, 3, 3}));
  EXPECT_EQ(cifar->feature_dim(), 128);

  auto wrn = make_model(spec_of("wrn-28-2", 10), Device::CPU, false);
  const ParamTable& w = wrn->param_table();
  EXPECT_EQ(w[0].name, "conv1.weight");
  EXPECT_EQ(w[1].name, "block1.layer.0.bn1.weight");
  EXPECT_GE(w.find("block1.layer.0.convShortcut.weight"), 0);
  EXPECT_LT(w.find("block1.layer.1.convShortcut.weight"), 0);
  EXPECT_GE(w.find("block3.layer.3.conv2.weight"), 0);
  EXPECT_EQ(w[w.size() - 3].name, "bn1.bias");
  EXPECT_EQ(wrn->feature_dim(), 128);

  ModelSpec mlp;
  mlp.arch = "mlp";
  mlp.mlp_sizes = {512, 4096, 256};
  auto head = make_model(mlp, Device::CPU);
  EXPECT_EQ(head->param_table()[0].name, "0.weight");
  EXPECT_EQ(head->param_table()[2].name, "1.weight");
  EXPECT_EQ(head->param_table()[4].name, "3.weight");
  EXPECT_EQ(head->param_table()[4].shape, (Shape{256, 4096}));
  EXPECT_EQ(head->output_dim(), 256);
}

TEST(Models, SpecProblemsAreNamed) {
  EXPECT_EQ(spec_of("resnet18").problem(), "");
  EXPECT_NE(spec_of("resnet19").problem().find("arch 'resnet19'"), std::string::npos);
  EXPECT_NE(spec_of("wrn-27-2").problem(), "");
  EXPECT_NE(spec_of("wrn-28-2x").problem(), "");
  EXPECT_EQ(spec_of("wrn-10-2").problem(), "");
  EXPECT_NE(spec_of("resnet18", 0, "tiny").problem().find("stem 'tiny'"), std::string::npos);
  EXPECT_NE(spec_of("resnet18", 0, "cifar", 2).problem().find("in_channels"), std::string::npos);
  EXPECT_NE(spec_of("mlp").problem().find("three sizes"), std::string::npos);
  EXPECT_THROW(make_model(spec_of("vgg16"), Device::CPU), Error);
  const ModelSpec s = spec_of("wrn-28-8", 100, "cifar", 1, 32);
  const ModelSpec back = ModelSpec::from_json(s.to_json());
  EXPECT_EQ(back.to_json(), s.to_json());
  EXPECT_THROW(ModelSpec::from_json(nlohmann::json{{"arch", "resnet18"}}), Error);
}

// Sample standard deviation of a slot.
double stddev(const std::vector<float>& v) {
  double mean = 0, sq = 0;
  for (float x : v) mean += x;
  mean /= static_cast<double>(v.size());
  for (float x : v) sq += (x - mean) * (x - mean);
  return std::sqrt(sq / static_cast<double>(v.size() - 1));
}

TEST(Models, InitialisationIsSeededAndFollowsTheReferences) {
  auto a = make_model(spec_of("resnet18", 10, "cifar", 3, 32), Device::CPU);
  auto b = make_model(spec_of("resnet18", 10, "cifar", 3, 32), Device::CPU);
  a->init(7);
  b->init(7);
  EXPECT_EQ(to_host_f32(a->params().all()), to_host_f32(b->params().all()));
  b->init(8);
  EXPECT_NE(to_host_f32(a->params().slot("conv1.weight")), to_host_f32(b->params().slot("conv1.weight")));

  // Kaiming normal, fan_out: layer4 conv2 is (256, 256, 3, 3): std sqrt(2 / 2304).
  const std::vector<float> w = to_host_f32(a->params().slot("layer4.0.conv2.weight"));
  EXPECT_NEAR(stddev(w), std::sqrt(2.0 / 2304.0), 0.01 * std::sqrt(2.0 / 2304.0));
  // nn.Linear default: uniform within 1/sqrt(fan_in) (fan_in 256): std bound / sqrt(3).
  const std::vector<float> fc = to_host_f32(a->params().slot("fc.weight"));
  for (float x : fc) ASSERT_LE(std::fabs(x), 1.0f / 16.0f);
  EXPECT_NEAR(stddev(fc), 1.0 / 16.0 / std::sqrt(3.0), 0.1 / 16.0);
  EXPECT_EQ(to_host_f32(a->params().slot("bn1.weight")), std::vector<float>(32, 1.0f));
  EXPECT_EQ(to_host_f32(a->params().slot("bn1.bias")), std::vector<float>(32, 0.0f));
  EXPECT_EQ(to_host_f32(a->buffers().slot("bn1.running_var")), std::vector<float>(32, 1.0f));
  EXPECT_EQ(to_host_f32(a->buffers().slot("bn1.running_mean")), std::vector<float>(32, 0.0f));

  // The port's classifier: Xavier normal, zero bias. (128 -> 10: std sqrt(2 / 138))
  auto wrn = make_model(spec_of("wrn-28-2", 10), Device::CPU);
  wrn->init(3);
  EXPECT_NEAR(stddev(to_host_f32(wrn->params().slot("fc.weight"))), std::sqrt(2.0 / 138.0), 0.15 * std::sqrt(2.0 / 138.0));
  EXPECT_EQ(to_host_f32(wrn->params().slot("fc.bias")), std::vector<float>(10, 0.0f));
}

TEST(Models, CheckpointRebuildsTheModel) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(::testing::TempDir()) / ("tessera_model_" + std::to_string(::getpid()) + ".safetensors")).string();
  auto a = make_model(spec_of("wrn-10-2", 10, "cifar", 1), Device::CPU);
  a->init(11);
  fill_value(a->buffers().slot("bn1.num_batches_tracked"), 17.0f);
  SafetensorsWriter w;
  add_model(w, *a, "teacher.");
  w.write(path);

  const SafetensorsFile f = SafetensorsFile::read(path);
  auto b = load_model(f, Device::CPU, "teacher.");
  EXPECT_EQ(b->spec().to_json(), a->spec().to_json());
  EXPECT_EQ(to_host_f32(b->params().all()), to_host_f32(a->params().all()));
  EXPECT_EQ(to_host_f32(b->buffers().all()), to_host_f32(a->buffers().all()));
  EXPECT_THROW(model_spec_from(f), Error);  // no "model" key without the prefix

  // A model of another shape lists what does not match.
  auto wide = make_model(spec_of("wrn-10-4", 10, "cifar", 1), Device::CPU);
  try {
    load_model(f, *wide, "teacher.");
    FAIL() << "a wrn-10-2 checkpoint loaded into a wrn-10-4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'teacher.block1.layer.0.conv1.weight' has shape [32, 16, 3, 3], expected [64, 16, 3, 3]"),
              std::string::npos)
        << e.what();
  }
  fs::remove(path);
}

}  // namespace
}  // namespace tessera
