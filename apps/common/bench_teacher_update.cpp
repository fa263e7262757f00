// bench teacher-update: the fused TMA / SE / STS update over a real model's parameter arena.
//
//   build/bench teacher-update --arch resnet18 --stem cifar --mode sts --granularity tensor
//                              --device cpu|cuda [--preserve-prob 0.7] [--iters N]
//
// Prints the time per update and the bandwidth counted as 12 bytes per parameter (read the
// student and the teacher, write the teacher), which is what an update of every fragment
// moves. With p > 0 a kept fragment is neither read nor written, so the bytes actually moved
// are 12 x the updated parameters; that "effective" figure is printed too. On CUDA the same
// run measures a device-to-device copy of the arena (8 bytes per parameter: one read, one
// write) and prints the ratio of the two bandwidths. The last line is one JSON object.
//
// The parameter table: models/ has not landed in this branch yet, so the table is built here
// from the torchvision shapes (ResNet-18 / ResNet-50 backbone without fc, plus BYOL's projector
// 2048|512 -> 4096 (BN) -> 256, the part of the heads the teacher holds).
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "apps/common/bench.h"
#include "engine/check.h"
#include "engine/device.h"
#include "engine/teacher.h"

namespace tessera {

namespace {

void add_bn(ParamTable& t, const std::string& name, int64_t c) {
  t.add(name + ".weight", Shape{c}, ParamKind::BnWeight);
  t.add(name + ".bias", Shape{c}, ParamKind::BnBias);
}

void add_conv(ParamTable& t, const std::string& name, int64_t out, int64_t in, int64_t k) {
  t.add(name + ".weight", Shape{out, in, k, k}, ParamKind::ConvWeight);
}

// torchvision's resnet18 / resnet50 parameters (no fc), with a CIFAR (3x3, stride 1) or
// ImageNet (7x7) stem, then BYOL's projector.
ParamTable resnet_byol_table(const std::string& arch, const std::string& stem) {
  const bool bottleneck = arch == "resnet50";
  if (arch != "resnet18" && !bottleneck) throw UsageError(cat("--arch: expected resnet18|resnet50, found '", arch, "'"));
  if (stem != "cifar" && stem != "imagenet") throw UsageError(cat("--stem: expected cifar|imagenet, found '", stem, "'"));
  ParamTable t;
  add_conv(t, "conv1", 64, 3, stem == "cifar" ? 3 : 7);
  add_bn(t, "bn1", 64);
  const int blocks[4] = {2, 2, 2, 2}, blocks50[4] = {3, 4, 6, 3};
  const int64_t expansion = bottleneck ? 4 : 1;
  int64_t in = 64;
  for (int layer = 0; layer < 4; ++layer) {
    const int64_t width = 64 << layer;
    for (int b = 0; b < (bottleneck ? blocks50 : blocks)[layer]; ++b) {
      const std::string p = cat("layer", layer + 1, ".", b, ".");
      if (bottleneck) {
        add_conv(t, p + "conv1", width, in, 1);
        add_bn(t, p + "bn1", width);
        add_conv(t, p + "conv2", width, width, 3);
        add_bn(t, p + "bn2", width);
        add_conv(t, p + "conv3", width * 4, width, 1);
        add_bn(t, p + "bn3", width * 4);
      } else {
        add_conv(t, p + "conv1", width, in, 3);
        add_bn(t, p + "bn1", width);
        add_conv(t, p + "conv2", width, width, 3);
        add_bn(t, p + "bn2", width);
      }
      if (b == 0 && (layer > 0 || bottleneck)) {
        add_conv(t, p + "downsample.0", width * expansion, in, 1);
        add_bn(t, p + "downsample.1", width * expansion);
      }
      in = width * expansion;
    }
  }
  t.add("projector.0.weight", Shape{4096, in}, ParamKind::LinearWeight);
  t.add("projector.0.bias", Shape{4096}, ParamKind::Bias);
  add_bn(t, "projector.1", 4096);
  t.add("projector.3.weight", Shape{256, 4096}, ParamKind::LinearWeight);
  t.add("projector.3.bias", Shape{256}, ParamKind::Bias);
  return t;
}

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
          "bench teacher-update [--arch resnet18|resnet50 (resnet18)] [--stem cifar|imagenet (cifar)]\n"
          "  [--mode none|tma|se|sts|copy (sts)] [--granularity tensor|channel|element (tensor)]\n"
          "  [--device auto|cpu|cuda (cpu)] [--preserve-prob P (0.7)] [--iters N (20 cpu, 200 cuda)]\n");
      return 0;
    }
    if (i + 1 >= argc) throw UsageError(cat(a, ": expected a value"));
    const std::string v = argv[++i];
    if (a == "--arch") arch = v;
    else if (a == "--stem") stem = v;
    else if (a == "--mode") mode = v;
    else if (a == "--granularity") granularity = v;
    else if (a == "--device") device_flag = v;
    else if (a == "--preserve-prob") preserve_prob = std::stof(v);
    else if (a == "--iters") iters = std::stoi(v);
    else throw UsageError(cat("unknown flag '", a, "' (see --help)"));
  }
  std::string note;
  const Device device = select_device(device_flag, &note);
  std::printf("%s\n", note.c_str());
  if (iters <= 0) iters = device == Device::CUDA ? 200 : 20;

  const ParamTable params = resnet_byol_table(arch, stem);
  const ParamTable no_buffers;
  TeacherConfig config;
  config.mode = parse_smoothing_mode(mode);
  config.granularity = parse_granularity(granularity);
  config.preserve_prob = preserve_prob;
  config.total_steps = iters + 1;
  config.seed = 1;
  TeacherSmoother smoother(params, no_buffers, device, config);
  Arena student(params, device), teacher(params, device), sb(no_buffers, device), tb(no_buffers, device);
  fill_value(student.all(), 0.5f);
  fill_value(teacher.all(), 0.25f);

  const int64_t n = params.total_numel();
  std::printf("model %s (%s stem) + BYOL projector: %zu tensors, %lld parameters (%.1f MB per arena)\n",
              arch.c_str(), stem.c_str(), params.size(), static_cast<long long>(n), 4e-6 * static_cast<double>(n));
  smoother.update(student, teacher, sb, tb, 0);  // warm-up: first touch, kernel load
  synchronize(device);
  double updated = 0;
  for (int k = 1; k <= iters; ++k) updated += smoother.stats_at(k).params_updated;
  updated /= iters;
  auto t0 = std::chrono::steady_clock::now();
  for (int k = 1; k <= iters; ++k) smoother.update(student, teacher, sb, tb, k);
  synchronize(device);
  const double update_s = seconds_since(t0) / iters;
  const double gbps = 12.0 * static_cast<double>(n) / update_s * 1e-9;
  const double effective_gbps = gbps * updated;
  std::printf("update (%s, %s): %.3f ms, %.1f GB/s at 12 bytes/param; %.1f%% of parameters updated per step on "
              "average, %.1f GB/s actually moved\n",
              mode.c_str(), granularity.c_str(), update_s * 1e3, gbps, 100 * updated, effective_gbps);

  nlohmann::json j = {{"bench", "teacher-update"}, {"arch", arch}, {"stem", stem}, {"mode", mode},
                      {"granularity", granularity}, {"device", device_name(device)},
                      {"device_description", device_description(device)}, {"preserve_prob", smoother.preserve_prob()},
                      {"params", n}, {"iters", iters}, {"update_ms", update_s * 1e3}, {"update_gbps", gbps},
                      {"params_updated", updated}, {"effective_gbps", effective_gbps}};
  if (device == Device::CUDA) {
    copy(teacher.all(), student.all());  // warm-up
    synchronize(device);
    t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < iters; ++k) copy(teacher.all(), student.all());
    synchronize(device);
    const double copy_s = seconds_since(t0) / iters;
    const double copy_gbps = 2.0 * static_cast<double>(teacher.all().bytes()) / copy_s * 1e-9;
    std::printf("device-to-device copy of the arena: %.3f ms, %.1f GB/s (read + write); update / copy = %.2f "
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
