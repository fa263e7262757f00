// models/: parameter tables against torchvision's and the FixMatch port's (counts and names),
// seeded initialisation, BatchNorm momenta, specs, and model checkpoints. Forward passes are
// tested in tests/models_forward_test.cpp and against PyTorch in tests/torchvision_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/cpu_kernels.h"
#include "engine/ops.h"
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

  // nn.Linear default: uniform within 1/sqrt(fan_in) (fan_in 256): std bound / sqrt(3).
  const std::vector<float> fc = to_host_f32(a->params().slot("fc.weight"));
  for (float x : fc) ASSERT_LE(std::fabs(x), 1.0f / 16.0f);
  EXPECT_NEAR(stddev(fc), 1.0 / 16.0 / std::sqrt(3.0), 0.1 / 16.0);
  EXPECT_EQ(to_host_f32(a->params().slot("bn1.weight")), std::vector<float>(32, 1.0f));
  EXPECT_EQ(to_host_f32(a->params().slot("bn1.bias")), std::vector<float>(32, 0.0f));
  EXPECT_EQ(to_host_f32(a->buffers().slot("bn1.running_var")), std::vector<float>(32, 1.0f));
  EXPECT_EQ(to_host_f32(a->buffers().slot("bn1.running_mean")), std::vector<float>(32, 0.0f));
}

// How far a sample standard deviation may be from the true one. For n draws from N(0, s^2),
// (n - 1) S^2 / s^2 is chi-squared with n - 1 degrees of freedom, so S / s has a standard
// deviation of about 1 / sqrt(2 (n - 1)). Five of those: a correct draw falls outside with
// probability below 1e-6 for any seed (the draws here are seeded, so the test is also
// deterministic). The layers below are chosen so that every wrong choice is several of these
// tolerances away.
double sampling_tolerance(size_t n) { return 5.0 / std::sqrt(2.0 * static_cast<double>(n - 1)); }

// Both references draw convolutions from N(0, 2 / fan_out) (kaiming_normal_, mode="fan_out"),
// fan_out = out channels x kernel area, where fan_in = in channels x kernel area. The layers
// checked have fan_out far from fan_in, so using the other fan is a clear failure:
//   conv1 (64, 3, 7, 7):                 fan_out 3136, fan_in 147: fan_in's std is 4.6x larger
//   layer4.0.downsample.0 (512, 256, 1, 1): fan_out 512, fan_in 256: 1.41x larger
TEST(Models, ConvolutionsAreKaimingNormalWithFanOut) {
  auto m = make_model(spec_of("resnet18", 0, "imagenet", 3, 64), Device::CPU, /*initialise=*/false);
  m->init(13);
  struct Layer {
    const char* name;
    double fan_out, fan_in;
  };
  for (const Layer& l : {Layer{"conv1.weight", 64 * 49, 3 * 49}, Layer{"layer4.0.downsample.0.weight", 512, 256}}) {
    const std::vector<float> w = to_host_f32(m->params().slot(l.name));
    const double want = std::sqrt(2.0 / l.fan_out), wrong = std::sqrt(2.0 / l.fan_in);
    const double tol = sampling_tolerance(w.size());
    ASSERT_GT(std::fabs(wrong / want - 1.0), 6 * tol) << l.name << ": the two fans must be told apart";
    EXPECT_NEAR(stddev(w) / want, 1.0, tol) << l.name << ": std " << stddev(w) << ", N(0, 2 / fan_out) has " << want
                                             << ", N(0, 2 / fan_in) " << wrong;
  }
}

// The port's classifier: Xavier normal, N(0, 2 / (fan_in + fan_out)). With 1000 classes
// (128 -> 1000) every other choice is clearly off: 2 / (128 + 1000) gives std 0.0421, where
// fan_out alone gives 0.0447 (+6%), fan_in alone 0.125 (x3), nn.Linear's default 0.051.
// 128,000 draws: tolerance 1.0%.
TEST(Models, WideResNetClassifierIsXavierNormal) {
  auto wrn = make_model(spec_of("wrn-10-2", 1000), Device::CPU, /*initialise=*/false);
  wrn->init(3);
  const std::vector<float> w = to_host_f32(wrn->params().slot("fc.weight"));
  ASSERT_EQ(w.size(), 128u * 1000u);
  const double want = std::sqrt(2.0 / (128.0 + 1000.0));
  EXPECT_NEAR(stddev(w) / want, 1.0, sampling_tolerance(w.size())) << "std " << stddev(w) << ", Xavier " << want;
  EXPECT_EQ(to_host_f32(wrn->params().slot("fc.bias")), std::vector<float>(1000, 0.0f));
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

// One train step (train-mode forward, cross-entropy, backward) with the BatchNorm + ReLU outputs
// inside blocks recomputed (ops::batch_norm_relu_conv2d) and with the unfused ops: the same
// loss, gradients and running statistics to the last bit on both CPU tiers. ResNet-18 (basic
// blocks), ResNet-50 (bottlenecks: two fused uses a block) and WRN-16-2 (identity-shortcut
// blocks, where bn1's activation is fused too; leaky ReLU).
TEST(Models, RecomputedBatchNormReluGivesTheSameStep) {
  struct Case {
    ModelSpec spec;
    int image;
  };
  const Case cases[] = {{spec_of("resnet18", 10, "cifar", 3, 8), 16},
                        {spec_of("resnet50", 10, "imagenet", 3, 4), 32},
                        {spec_of("wrn-16-2", 10, "cifar", 3), 16}};
  for (CpuKernels tier : {CpuKernels::Reference, CpuKernels::Fast}) {
    CpuKernelsScope scope(tier);
    for (const Case& c : cases) {
      const int64_t n = 4;
      OwnedTensor images(Device::CPU, Shape{n, 3, c.image, c.image}), labels(Device::CPU, Shape{n}, DType::I32);
      std::vector<float> pixels(static_cast<size_t>(images.t.numel()));
      for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::sin(0.37f * static_cast<float>(i));
      from_host(images.t, pixels);
      from_host(labels.t, std::vector<int32_t>{3, 1, 4, 1});
      std::vector<float> loss[2], grads[2], buffers[2];
      for (int recompute = 0; recompute < 2; ++recompute) {
        auto m = make_model(c.spec, Device::CPU);
        m->set_recompute_bn_relu(recompute == 1);
        fill_zero(m->grads().all());
        Workspace ws(Device::CPU);
        Graph g(ws);
        Var* l = ops::cross_entropy(g, m->forward(g, g.input(images.t, "images"), true), labels.t);
        g.backward(l);
        loss[recompute] = to_host_f32(l->value);
        g.clear();  // adds num_batches_tracked
        grads[recompute] = to_host_f32(m->grads().all());
        buffers[recompute] = to_host_f32(m->buffers().all());
      }
      const std::string where = cat(c.spec.arch, ", ", cpu_kernels_name(cpu_kernels()));
      EXPECT_EQ(loss[1], loss[0]) << where;
      EXPECT_EQ(grads[1], grads[0]) << where;
      EXPECT_EQ(buffers[1], buffers[0]) << where;
    }
  }
}

// Each BatchNorm's momentum is the reference's: 0.1 (torchvision ResNet, nn.BatchNorm1d in the
// MLP head) and 0.001 (the FixMatch port's WRN). Read from the running means without knowing
// the batch means: from running_mean 0, two train-mode forwards of one batch (the same input
// reaches every BN, parameters do not move) give m*mu, then m*mu + (1-m)*m*mu, so
// m = 2 - second / first, per channel. The port's WRN never applies bn1 of a stage's first
// block after stage 1 (wide_resnet.cpp): those stay at zero.
TEST(Models, BatchNormMomentumFollowsTheReferences) {
  ModelSpec mlp;
  mlp.arch = "mlp";
  mlp.mlp_sizes = {6, 16, 4};
  struct Case {
    ModelSpec spec;
    Shape input;
    float momentum;
    std::vector<std::string> unused;
  };
  const Case cases[] = {{spec_of("resnet18", 10, "cifar", 3, 8), Shape{4, 3, 16, 16}, 0.1f, {}},
                        {spec_of("wrn-10-2", 10, "cifar", 3), Shape{4, 3, 16, 16}, 0.001f,
                         {"block2.layer.0.bn1.running_mean", "block3.layer.0.bn1.running_mean"}},
                        {mlp, Shape{8, 6}, 0.1f, {}}};
  for (const Case& c : cases) {
    auto m = make_model(c.spec, Device::CPU);
    OwnedTensor x(Device::CPU, c.input);
    std::vector<float> values(static_cast<size_t>(x.t.numel()));
    for (size_t i = 0; i < values.size(); ++i) values[i] = 1.0f + std::sin(0.37f * static_cast<float>(i));
    from_host(x.t, values);
    std::vector<float> after[2];
    for (int pass = 0; pass < 2; ++pass) {
      Workspace ws(Device::CPU);
      Graph g(ws);
      NoGradScope no_grad(g);
      m->forward(g, g.input(x.t, "x"), /*train=*/true);
      g.clear();
      after[pass] = to_host_f32(m->buffers().all());
    }
    int checked = 0;
    std::vector<std::string> unused;
    for (const Slot& s : m->buffer_table().slots()) {
      if (s.kind != ParamKind::BnRunningMean) continue;
      const auto begin = after[0].begin() + s.offset, end = begin + s.numel;
      if (std::all_of(begin, end, [](float v) { return v == 0.0f; })) {
        unused.push_back(s.name);
        continue;
      }
      // The channel with the largest mean, where rounding moves the ratio least.
      int64_t best = s.offset;
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i)
        if (std::fabs(after[0][static_cast<size_t>(i)]) > std::fabs(after[0][static_cast<size_t>(best)])) best = i;
      const float first = after[0][static_cast<size_t>(best)], second = after[1][static_cast<size_t>(best)];
      EXPECT_NEAR(2.0f - second / first, c.momentum, 0.01f * c.momentum) << c.spec.arch << " " << s.name;
      ++checked;
    }
    EXPECT_GT(checked, 0) << c.spec.arch;
    EXPECT_EQ(unused, c.unused) << c.spec.arch;
  }
}

}  // namespace
}  // namespace tessera
