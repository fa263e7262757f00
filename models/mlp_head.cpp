// The BYOL projector / predictor: Linear(IN, HIDDEN) - BatchNorm1d - ReLU - Linear(HIDDEN, OUT),
// named as the nn.Sequential that solo-learn and lightly build ("0", "1", "3"; the ReLU is
// "2" and has no parameters), so a file saved with prefix "projector." loads into
// `projector = nn.Sequential(...)` of those code bases. nn.Linear / nn.BatchNorm1d default
// init and momentum.
#include "engine/ops.h"
#include "models/architectures.h"

namespace tessera {

namespace {

class MlpHead : public Model {
 public:
  explicit MlpHead(const ModelSpec& spec) : Model(spec) {
    const int in = spec.mlp_sizes[0], hidden = spec.mlp_sizes[1], out = spec.mlp_sizes[2];
    fc1_ = add_linear("0", in, hidden, Init::TorchLinearDefault, Init::TorchLinearDefault);
    bn_ = add_batch_norm("1", hidden, 0.1f);
    fc2_ = add_linear("3", hidden, out, Init::TorchLinearDefault, Init::TorchLinearDefault);
    set_feature_dim(out);
  }

  // x (N, IN) -> (N, OUT)
  Var* features(Graph& g, Var* x, bool train) override {
    Var* h = ops::relu_(g, apply(g, bn_, apply(g, fc1_, x), train));
    return apply(g, fc2_, h);
  }

 private:
  Linear fc1_, fc2_;
  BatchNorm bn_;
};

}  // namespace

std::unique_ptr<Model> build_mlp_head(const ModelSpec& spec) { return std::make_unique<MlpHead>(spec); }

}  // namespace tessera
