// ResNet-18 / 34 / 50 exactly as torchvision.models.resnet builds them (v1.5: the stride of a
// bottleneck sits on its 3x3 conv), with the same registration order and names, so a
// checkpoint loads into torchvision with load_state_dict(strict=True):
//
//   conv1 bn1 [maxpool] layer1..layer4 (blocks "layerL.B": conv1 bn1 conv2 bn2 [conv3 bn3]
//   [downsample.0 (1x1 conv) downsample.1 (BN)]) avgpool fc
//
// Options beyond torchvision: stem "cifar" (3x3 stride-1 conv1, no max-pool; torchvision
// loads it after `model.conv1 = nn.Conv2d(C, W, 3, 1, 1, bias=False); model.maxpool =
// nn.Identity()`), 1 input channel, and a base width other than 64 (layer widths W, 2W, 4W, 8W).
// Initialisation as torchvision: convs Kaiming normal (fan_out, relu), BN weight 1 / bias 0,
// fc nn.Linear's default uniform.
#include "engine/ops.h"
#include "engine/profile.h"
#include "models/architectures.h"

namespace tessera {

namespace {

struct Block {
  std::string name;          // "layer1.0": labels the block's kernels in profiles
  Conv conv1, conv2, conv3;  // conv3 only in bottlenecks
  BatchNorm bn1, bn2, bn3;
  bool has_downsample = false;
  Conv down_conv;
  BatchNorm down_bn;
};

class ResNet : public Model {
 public:
  explicit ResNet(const ModelSpec& spec) : Model(spec) {
    const int depth = resnet_depth(spec.arch);
    const std::vector<int> blocks = depth == 18 ? std::vector<int>{2, 2, 2, 2} : std::vector<int>{3, 4, 6, 3};
    bottleneck_ = depth == 50;
    const int expansion = bottleneck_ ? 4 : 1;
    imagenet_stem_ = spec.stem == "imagenet";

    const int w = spec.width;
    conv1_ = imagenet_stem_ ? add_conv("conv1", spec.in_channels, w, 7, 2, 3) : add_conv("conv1", spec.in_channels, w, 3, 1, 1);
    bn1_ = add_batch_norm("bn1", w, kMomentum);
    int in = w;
    for (int layer = 0; layer < 4; ++layer) {
      const int planes = w << layer;
      for (int b = 0; b < blocks[static_cast<size_t>(layer)]; ++b) {
        const int stride = (layer > 0 && b == 0) ? 2 : 1;
        const std::string name = "layer" + std::to_string(layer + 1) + "." + std::to_string(b);
        Block k;
        k.name = name;
        if (bottleneck_) {
          k.conv1 = add_conv(name + ".conv1", in, planes, 1, 1, 0);
          k.bn1 = add_batch_norm(name + ".bn1", planes, kMomentum);
          k.conv2 = add_conv(name + ".conv2", planes, planes, 3, stride, 1);
          k.bn2 = add_batch_norm(name + ".bn2", planes, kMomentum);
          k.conv3 = add_conv(name + ".conv3", planes, planes * expansion, 1, 1, 0);
          k.bn3 = add_batch_norm(name + ".bn3", planes * expansion, kMomentum);
        } else {
          k.conv1 = add_conv(name + ".conv1", in, planes, 3, stride, 1);
          k.bn1 = add_batch_norm(name + ".bn1", planes, kMomentum);
          k.conv2 = add_conv(name + ".conv2", planes, planes, 3, 1, 1);
          k.bn2 = add_batch_norm(name + ".bn2", planes, kMomentum);
        }
        if (stride != 1 || in != planes * expansion) {
          k.has_downsample = true;
          k.down_conv = add_conv(name + ".downsample.0", in, planes * expansion, 1, stride, 0);
          k.down_bn = add_batch_norm(name + ".downsample.1", planes * expansion, kMomentum);
        }
        in = planes * expansion;
        blocks_.push_back(k);
      }
    }
    set_feature_dim(in);
    if (spec.num_classes > 0)
      set_classifier(add_linear("fc", in, spec.num_classes, Init::TorchLinearDefault, Init::TorchLinearDefault));
  }

  Var* features(Graph& g, Var* x, bool train) override {
    // In place (ops::relu_, ops::add_): the pre-activation is not kept for the step (ops.h).
    x = ops::relu_(g, apply(g, bn1_, apply(g, conv1_, x), train));
    if (imagenet_stem_) x = ops::max_pool2d(g, x, 3, 2, 1);
    for (const Block& k : blocks_) {
      profile::LayerScope block(k.name.c_str());  // its convs refine it to "layer1.0.conv1"
      // relu(bn1) feeds only conv2 (and a bottleneck's relu(bn2) only conv3): not kept for the
      // step but made again in the backward (Model::recompute_bn_relu).
      Var* out = apply(g, k.bn1, 0.0f, k.conv2, apply(g, k.conv1, x), train);
      if (bottleneck_) out = apply(g, k.bn2, 0.0f, k.conv3, out, train);
      out = apply(g, bottleneck_ ? k.bn3 : k.bn2, out, train);
      Var* identity = k.has_downsample ? apply(g, k.down_bn, apply(g, k.down_conv, x), train) : x;
      x = ops::relu_(g, ops::add_(g, out, identity));
    }
    return ops::global_avg_pool(g, x);
  }

 private:
  static constexpr float kMomentum = 0.1f;  // nn.BatchNorm2d's default
  bool bottleneck_ = false;
  bool imagenet_stem_ = true;
  Conv conv1_;
  BatchNorm bn1_;
  std::vector<Block> blocks_;
};

}  // namespace

int resnet_depth(const std::string& arch) {
  if (arch == "resnet18") return 18;
  if (arch == "resnet34") return 34;
  if (arch == "resnet50") return 50;
  return 0;
}

std::unique_ptr<Model> build_resnet(const ModelSpec& spec) { return std::make_unique<ResNet>(spec); }

}  // namespace tessera
