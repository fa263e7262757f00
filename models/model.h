// Models without a Module hierarchy.
//
// A Model is three arenas on one device - parameters, their gradients, and BatchNorm
// buffers (running_mean, running_var, num_batches_tracked) - laid out by two ParamTables
// filled in registration order with PyTorch's names. Layers are plain structs of slot
// indices (Conv, BatchNorm, Linear) held by the architecture; forward() walks them and calls
// the engine's ops, so the whole network is one readable function per architecture
// (models/resnet.cpp, models/wide_resnet.cpp, models/mlp_head.cpp).
//
// A teacher is simply a second Model built from the same ModelSpec: its tables are equal by
// construction (same_layout), and its arenas are the student's "other set of arenas".
//
// Building: make_model(spec, device) registers the layers, allocates the arenas and draws
// the initial weights from Philox (stream kStreamInit, subsequence = slot index) so one seed
// fixes every weight on every device.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/autograd.h"

namespace tessera {

class SafetensorsFile;
class SafetensorsWriter;

// Everything needed to rebuild a model; stored in checkpoints as JSON metadata.
struct ModelSpec {
  std::string arch = "resnet18";  // resnet18 | resnet34 | resnet50 | wrn-<depth>-<k> | mlp
  std::string stem = "imagenet";  // ResNets: imagenet (7x7/2 conv + max-pool) | cifar (3x3/1, no pool)
  int in_channels = 3;            // 1 or 3
  int width = 64;                 // ResNets: channels of the stem and layer1 (64 in torchvision)
  int num_classes = 0;            // 0: no classifier; features() is the output
  std::vector<int> mlp_sizes;     // mlp: {in, hidden, out}

  // "" when the spec describes a buildable model, else what is wrong with it.
  std::string problem() const;
  nlohmann::json to_json() const;
  static ModelSpec from_json(const nlohmann::json& j);  // Error on missing / mistyped fields
};

// Layers: slot indices into the model's tables plus the hyper-parameters forward needs.
struct Conv {
  int weight = -1, bias = -1;  // bias -1: none
  int stride = 1, pad = 0;
};
struct BatchNorm {
  int weight = -1, bias = -1;                          // parameter slots (gamma, beta)
  int running_mean = -1, running_var = -1, num_batches = -1;  // buffer slots
  float momentum = 0.1f;
};
struct Linear {
  int weight = -1, bias = -1;
};

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }
  Device device() const { return params_.device(); }
  const ParamTable& param_table() const { return param_table_; }
  const ParamTable& buffer_table() const { return buffer_table_; }
  Arena& params() { return params_; }
  Arena& grads() { return grads_; }
  Arena& buffers() { return buffers_; }
  const Arena& params() const { return params_; }
  const Arena& buffers() const { return buffers_; }

  int feature_dim() const { return feature_dim_; }  // D of features()
  int output_dim() const { return spec_.num_classes > 0 ? spec_.num_classes : feature_dim_; }

  // The representation before the classifier: x (N, C, H, W) -> (N, D) for backbones,
  // (N, IN) -> (N, OUT) for an MLP head. train: batch statistics and running updates.
  virtual Var* features(Graph& g, Var* x, bool train) = 0;
  // Logits (N, num_classes) when the model has a classifier, else features().
  Var* forward(Graph& g, Var* x, bool train);
  // The classifier alone: features (N, D) -> logits (N, num_classes); identity without one.
  Var* classify(Graph& g, Var* features);

  // Draws every parameter as the reference implementation initialises it and resets the
  // buffers (running_mean 0, running_var 1, num_batches_tracked 0).
  void init(uint64_t seed);

  // Inside a residual block, a BatchNorm + ReLU output read only by the next convolution is
  // made again in the backward instead of being kept for the step (ops::batch_norm_relu_conv2d:
  // 60 MiB less for a ResNet-18 CIFAR step at batch 64). Off: the three unfused ops, which keep
  // it; the values and gradients are the same (tests/models_test.cpp). On by default.
  void set_recompute_bn_relu(bool on) { recompute_bn_relu_ = on; }
  bool recompute_bn_relu() const { return recompute_bn_relu_; }

 protected:
  explicit Model(ModelSpec spec) : spec_(std::move(spec)) {}
  friend std::unique_ptr<Model> make_model(const ModelSpec&, Device, bool);

  // How init() draws a parameter (the references' choices, named after torch.nn.init).
  enum class Init {
    KaimingNormalFanOut,  // N(0, 2 / fan_out): torchvision ResNet convs, FixMatch WRN convs
    XavierNormal,         // N(0, 2 / (fan_in + fan_out)): the FixMatch port's classifier
    TorchLinearDefault,   // U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear's own weight and bias
    Ones,
    Zeros,
  };

  // Registration, during construction only (before the arenas exist).
  Conv add_conv(const std::string& name, int in, int out, int kernel, int stride, int pad);
  BatchNorm add_batch_norm(const std::string& name, int channels, float momentum);
  Linear add_linear(const std::string& name, int in, int out, Init weight_init, Init bias_init);
  void set_feature_dim(int d) { feature_dim_ = d; }
  void set_classifier(const Linear& fc) { fc_ = fc; has_fc_ = true; }

  // Graph builders: parameter leaves come from the arenas, their names from the table.
  Var* param(Graph& g, int slot);
  Var* apply(Graph& g, const Conv& c, Var* x);
  Var* apply(Graph& g, const BatchNorm& bn, Var* x, bool train);  // 2d for (N,C,H,W), 1d for (N,C)
  Var* apply(Graph& g, const Linear& l, Var* x);
  // conv(leaky_relu(bn(x), slope)) where nothing else reads the activation: fused or not as
  // recompute_bn_relu() says.
  Var* apply(Graph& g, const BatchNorm& bn, float slope, const Conv& c, Var* x, bool train);

 private:
  void allocate(Device device);
  int add_param(const std::string& name, Shape shape, ParamKind kind, Init init);

  ModelSpec spec_;
  ParamTable param_table_, buffer_table_;
  std::vector<Init> init_;  // per parameter slot
  Arena params_, grads_, buffers_;
  int feature_dim_ = 0;
  Linear fc_;
  bool has_fc_ = false;
  bool recompute_bn_relu_ = true;
};

// Builds and allocates a model, and initialises it with seed 0 (call init(seed) for another)
// unless `initialise` is false (arenas left zero, e.g. before loading a checkpoint).
// Error when the spec has a problem().
std::unique_ptr<Model> make_model(const ModelSpec& spec, Device device, bool initialise = true);

// ---- checkpoints -----------------------------------------------------------------------
// A model in a safetensors file: its parameters and buffers under prefix + PyTorch name, and
// metadata key prefix + "model" holding the spec as JSON, so the file rebuilds its model.

void add_model(SafetensorsWriter& w, const Model& m, const std::string& prefix = "");
ModelSpec model_spec_from(const SafetensorsFile& f, const std::string& prefix = "");
// Copies the file's tensors into an existing model; Error listing every mismatch.
void load_model(const SafetensorsFile& f, Model& m, const std::string& prefix = "",
                bool allow_unexpected = false);
// Rebuilds the model the file describes and loads it.
std::unique_ptr<Model> load_model(const SafetensorsFile& f, Device device, const std::string& prefix = "",
                                  bool allow_unexpected = false);

}  // namespace tessera
