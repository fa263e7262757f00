// build/init: writes a freshly initialised model as a safetensors checkpoint (PyTorch names,
// the model's description in the metadata), e.g.
//
//   build/init --arch resnet18 --num-classes 1000 --out r18.safetensors
//   python: torchvision.models.resnet18().load_state_dict(state, strict=True)
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "models/model.h"
#include "kernels/cpu/blas_kernels.h"

namespace tessera {
namespace {

const char* kHelp =
    "usage: init --arch ARCH --out FILE [flags]\n"
    "Writes a freshly initialised model to a safetensors checkpoint with PyTorch names.\n"
    "  --arch ARCH          resnet18 | resnet34 | resnet50 | wrn-<depth>-<k> (depth 6n+4) | mlp\n"
    "                       (default resnet18)\n"
    "  --stem S             ResNets: imagenet (7x7/2 conv + max-pool) | cifar (3x3/1, no pool)\n"
    "                       (default imagenet)\n"
    "  --in-channels C      1 | 3 (default 3)\n"
    "  --width W            ResNets: base width, channels of conv1 and layer1 (default 64)\n"
    "  --num-classes K      classifier outputs; 0 for none (default 0)\n"
    "  --mlp-sizes I,H,O    mlp: input, hidden and output sizes (e.g. 512,4096,256)\n"
    "  --seed S             initialisation seed (default 0)\n"
    "  --out FILE           the checkpoint to write (required)\n";

struct Flags {
  std::map<std::string, std::string> values;
  bool has(const std::string& k) const { return values.count(k) != 0; }
  std::string get(const std::string& k, const std::string& fallback) const {
    return has(k) ? values.at(k) : fallback;
  }
};

// GNU long flags: --name value or --name=value; every flag takes a value.
Flags parse(int argc, char** argv, std::initializer_list<const char*> known) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      f.values["help"] = "";
      return f;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(cat("unexpected argument '", a, "'"));
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) throw UsageError(cat("--", name, ": missing value"));
      value = argv[++i];
    }
    bool ok = false;
    for (const char* k : known) ok = ok || name == k;
    if (!ok) throw UsageError(cat("unknown flag --", name));
    f.values[name] = value;
  }
  return f;
}

int64_t to_int(const Flags& f, const std::string& name, int64_t fallback, int64_t min) {
  if (!f.has(name)) return fallback;
  const std::string& v = f.values.at(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < min)
    throw UsageError(cat("--", name, ": expected an integer >= ", min, ", found '", v, "'"));
  return x;
}

int run(int argc, char** argv) {
  const Flags f = parse(argc, argv, {"arch", "stem", "in-channels", "width", "num-classes", "mlp-sizes", "seed", "out"});
  if (f.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  ModelSpec spec;
  spec.arch = f.get("arch", spec.arch);
  spec.stem = f.get("stem", spec.stem);
  spec.in_channels = static_cast<int>(to_int(f, "in-channels", spec.in_channels, 1));
  spec.width = static_cast<int>(to_int(f, "width", spec.width, 1));
  spec.num_classes = static_cast<int>(to_int(f, "num-classes", 0, 0));
  const uint64_t seed = static_cast<uint64_t>(to_int(f, "seed", 0, 0));
  if (!f.has("out")) throw UsageError("--out: required (the checkpoint to write)");
  const bool resnet = spec.arch.rfind("resnet", 0) == 0;
  for (const char* only_resnet : {"stem", "width"})
    if (!resnet && f.has(only_resnet)) throw UsageError(cat("--", only_resnet, ": applies to ResNets only, not ", spec.arch));
  if (spec.arch == "mlp") {
    if (!f.has("mlp-sizes")) throw UsageError("--mlp-sizes: required for --arch mlp (IN,HIDDEN,OUT)");
    int a = 0, b = 0, c = 0;
    char tail = 0;
    if (std::sscanf(f.values.at("mlp-sizes").c_str(), "%d,%d,%d%c", &a, &b, &c, &tail) != 3)
      throw UsageError(cat("--mlp-sizes: expected IN,HIDDEN,OUT, found '", f.values.at("mlp-sizes"), "'"));
    spec.mlp_sizes = {a, b, c};
  } else if (f.has("mlp-sizes")) {
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

  std::unique_ptr<Model> model = make_model(spec, Device::CPU, /*initialise=*/false);
  model->init(seed);
  SafetensorsWriter w;
  add_model(w, *model);
  w.add_metadata("format", "pt");
  w.add_metadata("seed", std::to_string(seed));
  const std::string out = f.values.at("out");
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
  try {
    return tessera::run(argc, argv);
  } catch (const tessera::UsageError& e) {
    std::fprintf(stderr, "init: %s (see init --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "init: %s\n", e.what());
    return 1;
  }
}
