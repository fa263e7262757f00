// bench teacher-update: the fused TMA / SE / STS update over a real model's parameters.
//
//   build/bench teacher-update --arch resnet18 --stem cifar --mode sts --granularity tensor
//                              --device cpu|cuda [--preserve-prob 0.7] [--iters N]
//
// The model: models/'s backbone (torchvision's ResNet without fc) and BYOL's projector
// (feature dim -> 4096 (BN, ReLU) -> 256), the part of the heads the teacher holds. They are
// two Models with an arena each, so one teacher step is two fused launches, and the copy it is
// compared with copies both arenas.
//
// Prints the time per update and the bandwidth counted as 12 bytes per parameter (read the
// student and the teacher, write the teacher), which is what an update of every fragment
// moves. With p > 0 a kept fragment is neither read nor written, so the bytes actually moved
// are 12 x the updated parameters; that "effective" figure is printed too, and the host CPU
// time (on a shared machine the wall time includes waiting for a core). On CUDA the same run
// measures a device-to-device copy of the arenas (8 bytes per parameter: one read, one write)
// and prints the ratio of the two bandwidths. The last line is one JSON object.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "apps/tools/bench/bench.h"
#include "engine/check.h"
#include "engine/device.h"
#include "engine/teacher.h"
#include "models/model.h"

namespace tessera {

namespace {

// The student and teacher copies of one model, and the smoother over them.
struct Pair {
  std::unique_ptr<Model> student, teacher;
  std::unique_ptr<TeacherSmoother> smoother;
  Pair(const ModelSpec& spec, Device device, const TeacherConfig& config)
      : student(make_model(spec, device, /*initialise=*/false)),
        teacher(make_model(spec, device, /*initialise=*/false)),
        smoother(std::make_unique<TeacherSmoother>(student->param_table(), student->buffer_table(), device, config)) {
    fill_value(student->params().all(), 0.5f);
    fill_value(teacher->params().all(), 0.25f);
  }
  int64_t numel() const { return student->param_table().total_numel(); }
  void update(int64_t step) {
    smoother->update(student->params(), teacher->params(), student->buffers(), teacher->buffers(), step);
  }
  void copy_params() { copy(teacher->params().all(), student->params().all()); }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int bench_teacher_update(int argc, char** argv) {
  std::string arch = "resnet18", stem = "cifar", mode = "sts", granularity = "tensor", device_flag = "cpu";
  float preserve_prob = 0.7f;
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help") {
      std::printf(
          "bench teacher-update [--arch resnet18|resnet34|resnet50 (resnet18)] [--stem cifar|imagenet (cifar)]\n"
          "  [--mode none|tma|se|sts|copy (sts)] [--granularity tensor|channel|element (tensor)]\n"
          "  [--device auto|cpu|cuda (cpu)] [--preserve-prob P (0.7)] [--iters N (20 cpu, 200 cuda)]\n");
      return 0;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(cat("unexpected argument '", a, "' (flags are --name value; see --help)"));
    if (i + 1 >= argc) throw UsageError(cat(a, ": expected a value"));
    const std::string v = argv[++i];
    if (a == "--arch") arch = v;
    else if (a == "--stem") stem = v;
    else if (a == "--mode") mode = v;
    else if (a == "--granularity") granularity = v;
    else if (a == "--device") device_flag = v;
    else if (a == "--preserve-prob") preserve_prob = bench_float(a, v, 0.0f, 1.0f);
    else if (a == "--iters") iters = bench_int(a, v, 1, 1000000);
    else throw UsageError(cat("unknown flag '", a, "' (see --help)"));
  }
  if (arch.rfind("resnet", 0) != 0) throw UsageError(cat("--arch: expected resnet18|resnet34|resnet50, found '", arch, "'"));
  if (stem != "cifar" && stem != "imagenet") throw UsageError(cat("--stem: expected cifar|imagenet, found '", stem, "'"));
  ModelSpec backbone;
  backbone.arch = arch;
  backbone.stem = stem;
  if (!backbone.problem().empty()) throw UsageError(cat("--arch: ", backbone.problem()));
  TeacherConfig config;
  try {  // their messages name the programs' flags (--smoothing, --granularity)
    config.mode = parse_smoothing_mode(mode);
  } catch (const std::exception&) {
    throw UsageError(cat("--mode: expected none|tma|se|sts|copy, found '", mode, "'"));
  }
  config.granularity = parse_granularity(granularity);
  config.preserve_prob = preserve_prob;
  std::string note;
  const Device device = select_device(device_flag, &note);
  std::printf("%s\n", note.c_str());
  if (iters <= 0) iters = device == Device::CUDA ? 200 : 20;
  config.total_steps = iters + 1;
  config.seed = 1;

  std::vector<Pair> pairs;
  pairs.emplace_back(backbone, device, config);
  ModelSpec projector;
  projector.arch = "mlp";
  projector.mlp_sizes = {pairs[0].student->feature_dim(), 4096, 256};
  pairs.emplace_back(projector, device, config);
  int64_t n = 0, arena_bytes = 0;
  size_t tensors = 0;
  for (const Pair& p : pairs) {
    n += p.numel();
    arena_bytes += static_cast<int64_t>(p.student->params().all().bytes());
    tensors += p.student->param_table().size();
  }
  std::printf("model %s (%s stem) + BYOL projector: %zu tensors, %lld parameters (%.1f MB per arena)\n",
              arch.c_str(), stem.c_str(), tensors, static_cast<long long>(n), 4e-6 * static_cast<double>(n));

  for (Pair& p : pairs) p.update(0);  // warm-up: first touch, kernel load
  synchronize(device);
  // Fraction of parameters updated, averaged over the timed steps (element granularity: the
  // first 3, since its host-side statistics cost one draw per parameter and barely vary).
  const int stat_steps = config.granularity == Granularity::Element ? std::min(iters, 3) : iters;
  double updated = 0;
  for (int k = 1; k <= stat_steps; ++k)
    for (const Pair& p : pairs) updated += p.smoother->stats_at(k).params_updated * static_cast<double>(p.numel());
  updated /= static_cast<double>(stat_steps) * static_cast<double>(n);

  const std::clock_t cpu0 = std::clock();
  auto t0 = std::chrono::steady_clock::now();
  for (int k = 1; k <= iters; ++k)
    for (Pair& p : pairs) p.update(k);
  synchronize(device);
  const double update_s = seconds_since(t0) / iters;
  const double cpu_s = static_cast<double>(std::clock() - cpu0) / CLOCKS_PER_SEC / iters;
  const double gbps = 12.0 * static_cast<double>(n) / update_s * 1e-9;
  const double effective_gbps = gbps * updated;
  std::printf("update (%s, %s): %.3f ms, %.1f GB/s at 12 bytes/param; %.1f%% of parameters updated per step on "
              "average, %.1f GB/s actually moved; host CPU time %.3f ms per update\n",
              mode.c_str(), granularity.c_str(), update_s * 1e3, gbps, 100 * updated, effective_gbps, cpu_s * 1e3);

  nlohmann::json j = {{"bench", "teacher-update"}, {"arch", arch}, {"stem", stem}, {"mode", mode},
                      {"granularity", granularity}, {"device", device_name(device)},
                      {"device_description", device_description(device)},
                      {"preserve_prob", pairs[0].smoother->preserve_prob()}, {"params", n}, {"iters", iters},
                      {"update_ms", update_s * 1e3}, {"update_gbps", gbps}, {"params_updated", updated},
                      {"effective_gbps", effective_gbps}, {"host_cpu_ms", cpu_s * 1e3}};
  if (device == Device::CUDA) {
    for (Pair& p : pairs) p.copy_params();  // warm-up
    synchronize(device);
    t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < iters; ++k)
      for (Pair& p : pairs) p.copy_params();
    synchronize(device);
    const double copy_s = seconds_since(t0) / iters;
    const double copy_gbps = 2.0 * static_cast<double>(arena_bytes) / copy_s * 1e-9;
    std::printf("device-to-device copy of the arenas: %.3f ms, %.1f GB/s (read + write); update / copy = %.2f "
                "(effective %.2f)\n",
                copy_s * 1e3, copy_gbps, gbps / copy_gbps, effective_gbps / copy_gbps);
    j["copy_ms"] = copy_s * 1e3;
    j["copy_gbps"] = copy_gbps;
    j["ratio_to_copy"] = gbps / copy_gbps;
    j["effective_ratio_to_copy"] = effective_gbps / copy_gbps;
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace tessera
