// WideResNet-<depth>-<k> as FixMatch trains it, with the names and data flow of the common
// PyTorch port (kekmodel/FixMatch-pytorch models/wideresnet.py, also USB's wrn.py):
//
//   conv1 (3x3, 16 channels)
//   block1 / block2 / block3: n = (depth - 4) / 6 pre-activation blocks each, widths 16k,
//     32k, 64k, strides 1, 2, 2; block "blockS.layer.B": bn1 conv1 bn2 conv2 [convShortcut]
//   bn1, leaky ReLU, global average pool, fc
//
// Every BN has momentum 0.001, every activation is leaky ReLU with slope 0.1. Init as the
// port: convs Kaiming normal (fan_out, leaky_relu with a = 0, so gain sqrt 2), BN 1 / 0,
// fc Xavier normal with zero bias.
//
// The block, where a = lrelu(bn1(x)):
//   same width in and out:        y = x + conv2(lrelu(bn2(conv1(a))))
//   width change, block1 (the port's activate_before_residual):
//                                 y = convShortcut(a) + conv2(lrelu(bn2(conv1(a))))
//   width change, block2 / block3: y = convShortcut(x) + conv2(lrelu(bn2(conv1(x))))
// The last case is the port's behaviour (TensorFlow FixMatch feeds `a` to conv1 there): we
// follow the port so a checkpoint computes the same function after loading into it. There
// bn1's output is unused; the port still runs it (updating its running statistics, which
// nothing reads), we skip it.
#include <cstdio>

#include "engine/ops.h"
#include "models/architectures.h"

namespace tessera {

namespace {

struct PreActBlock {
  BatchNorm bn1, bn2;
  Conv conv1, conv2;
  bool equal_in_out = true;
  bool activate_before_residual = false;
  Conv shortcut;
};

class WideResNet : public Model {
 public:
  explicit WideResNet(const ModelSpec& spec) : Model(spec) {
    int depth = 0, k = 0;
    parse_wrn(spec.arch, &depth, &k);
    const int n = (depth - 4) / 6;
    const int widths[4] = {16, 16 * k, 32 * k, 64 * k};
    conv1_ = add_conv("conv1", spec.in_channels, widths[0], 3, 1, 1);
    for (int stage = 0; stage < 3; ++stage) {
      for (int b = 0; b < n; ++b) {
        const std::string name = "block" + std::to_string(stage + 1) + ".layer." + std::to_string(b);
        const int in = b == 0 ? widths[stage] : widths[stage + 1];
        const int out = widths[stage + 1];
        const int stride = (b == 0 && stage > 0) ? 2 : 1;
        PreActBlock blk;
        blk.bn1 = add_batch_norm(name + ".bn1", in, kMomentum);
        blk.conv1 = add_conv(name + ".conv1", in, out, 3, stride, 1);
        blk.bn2 = add_batch_norm(name + ".bn2", out, kMomentum);
        blk.conv2 = add_conv(name + ".conv2", out, out, 3, 1, 1);
        blk.equal_in_out = in == out;
        blk.activate_before_residual = stage == 0;
        if (!blk.equal_in_out) blk.shortcut = add_conv(name + ".convShortcut", in, out, 1, stride, 0);
        blocks_.push_back(blk);
      }
    }
    bn_ = add_batch_norm("bn1", widths[3], kMomentum);
    set_feature_dim(widths[3]);
    if (spec.num_classes > 0)
      set_classifier(add_linear("fc", widths[3], spec.num_classes, Init::XavierNormal, Init::Zeros));
  }

  Var* features(Graph& g, Var* x, bool train) override {
    x = apply(g, conv1_, x);
    for (const PreActBlock& b : blocks_) {
      const bool skip_bn1 = !b.equal_in_out && !b.activate_before_residual;  // see the file comment
      // Where an activation feeds only the next convolution (a when the shortcut is the
      // identity; lrelu(bn2) always), it is made again in the backward rather than kept for the
      // step (Model::recompute_bn_relu).
      Var* a = nullptr;
      Var* out = nullptr;
      if (b.equal_in_out) {
        out = apply(g, b.bn1, kSlope, b.conv1, x, train);
      } else {
        a = skip_bn1 ? x : lrelu(g, apply(g, b.bn1, x, train));
        out = apply(g, b.conv1, a);
      }
      out = apply(g, b.bn2, kSlope, b.conv2, out, train);
      Var* residual = b.equal_in_out ? x : apply(g, b.shortcut, a);
      x = ops::add(g, residual, out);
    }
    x = lrelu(g, apply(g, bn_, x, train));
    return ops::global_avg_pool(g, x);
  }

 private:
  static constexpr float kMomentum = 0.001f;
  static constexpr float kSlope = 0.1f;
  // Always applied to a BatchNorm output, which nothing else reads: in place (ops.h).
  static Var* lrelu(Graph& g, Var* x) { return ops::leaky_relu_(g, x, kSlope); }

  Conv conv1_;
  std::vector<PreActBlock> blocks_;
  BatchNorm bn_;
};

}  // namespace

bool parse_wrn(const std::string& arch, int* depth, int* widen) {
  int d = 0, k = 0;
  if (std::sscanf(arch.c_str(), "wrn-%d-%d", &d, &k) != 2) return false;
  // Only the canonical spelling: "wrn-28-2", not "wrn-028-2" or "wrn-28-2x".
  if (arch != "wrn-" + std::to_string(d) + "-" + std::to_string(k)) return false;
  if (d < 10 || (d - 4) % 6 != 0 || k < 1) return false;
  *depth = d;
  *widen = k;
  return true;
}

std::unique_ptr<Model> build_wide_resnet(const ModelSpec& spec) { return std::make_unique<WideResNet>(spec); }

}  // namespace tessera
