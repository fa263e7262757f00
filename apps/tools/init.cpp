// build/init: writes a freshly initialised model as a safetensors checkpoint (PyTorch names,
// the model's description in the metadata), e.g.
//
//   build/init --arch resnet18 --num-classes 1000 --out r18.safetensors
//   python: torchvision.models.resnet18().load_state_dict(state, strict=True)
#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "kernels/cpu/blas_kernels.h"
#include "models/model.h"

namespace tessera {
namespace {

int init_main(int argc, char** argv) {
  ModelSpec spec;
  int64_t seed = 0;
  std::string mlp_sizes, out;
  Options o("init", "Writes a freshly initialised model to a safetensors checkpoint with PyTorch names.");
  o.add("arch", &spec.arch, "resnet18 | resnet34 | resnet50 | wrn-<depth>-<k> (depth 6n+4) | mlp");
  o.choice("stem", &spec.stem, {"imagenet", "cifar"},
           "ResNets: imagenet (7x7/2 conv + max-pool) | cifar (3x3/1, no pool)");
  o.add("in-channels", &spec.in_channels, "1 | 3").min(1);
  o.add("width", &spec.width, "ResNets: base width, channels of conv1 and layer1").min(1);
  o.add("num-classes", &spec.num_classes, "classifier outputs; 0 for none").min(0);
  o.add("mlp-sizes", &mlp_sizes, "mlp: input, hidden and output sizes I,H,O (e.g. 512,4096,256)");
  o.add("seed", &seed, "initialisation seed").min(0);
  o.add("out", &out, "the checkpoint to write").required();
  if (!o.parse(argc, argv)) return 0;
  const auto set = [&](const char* name) { return o.source(name) != "default"; };

  const bool resnet = spec.arch.rfind("resnet", 0) == 0;
  for (const char* only_resnet : {"stem", "width"})
    if (!resnet && set(only_resnet)) throw UsageError(cat("--", only_resnet, ": applies to ResNets only, not ", spec.arch));
  if (spec.arch == "mlp") {
    if (!set("mlp-sizes")) throw UsageError("--mlp-sizes: required for --arch mlp (IN,HIDDEN,OUT)");
    int a = 0, b = 0, c = 0;
    char tail = 0;
    if (std::sscanf(mlp_sizes.c_str(), "%d,%d,%d%c", &a, &b, &c, &tail) != 3)
      throw UsageError(cat("--mlp-sizes: expected IN,HIDDEN,OUT, found '", mlp_sizes, "'"));
    spec.mlp_sizes = {a, b, c};
  } else if (set("mlp-sizes")) {
    throw UsageError("--mlp-sizes: applies to --arch mlp only");
  }
  const std::string problem = spec.problem();
  if (!problem.empty()) {
    // Name the flag the problem is about (problem() speaks of the spec's fields).
    const std::pair<const char*, const char*> fields[] = {{"arch", "arch"},       {"stem", "stem"},
                                                          {"in_channels", "in-channels"}, {"width", "width"},
                                                          {"num_classes", "num-classes"}, {"mlp", "mlp-sizes"}};
    for (const auto& [field, flag] : fields)
      if (problem.find(field) != std::string::npos)
        throw UsageError(cat("--", flag, ": ", problem));
    throw UsageError(problem);
  }

  refuse_to_replace("out", out);
  std::unique_ptr<Model> model = make_model(spec, Device::CPU, /*initialise=*/false);
  model->init(static_cast<uint64_t>(seed));
  SafetensorsWriter w;
  add_model(w, *model);
  w.add_metadata("format", "pt");
  w.add_metadata("seed", std::to_string(seed));
  w.write(out);
  std::printf("init: %s -> %s (%lld parameters in %zu tensors, %zu buffers, seed %llu)\n",
              spec.to_json().dump().c_str(), out.c_str(), static_cast<long long>(model->param_table().total_numel()),
              model->param_table().size(), model->buffer_table().size(), static_cast<unsigned long long>(seed));
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  return tessera::run_program("init", [&] { return tessera::init_main(argc, argv); });
}
