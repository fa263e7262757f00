// bench train-step: forward + backward + an SGD (momentum 0.9) step of a backbone with a
// classifier and cross-entropy, on a fixed random batch.
//
//   build/bench train-step --arch resnet18 --stem cifar --width 64 --in-channels 3 --size 32
//                          --batch 64 --steps 5 --device cpu|cuda [--profile-steps A:B]
//                          [--cpu-kernels reference|fast] [--conv-routing measured|onednn|winograd]
//
// Prints the median ms per step over --steps timed steps after --warmup untimed ones (the
// first step sizes the workspace and, on CUDA, picks the cuDNN algorithms), images/s and the
// workspace high-water mark (and what the tape holds when the forward ends: the saved
// activations); the last line is one JSON object.
//
// Under mpirun (`mpirun -np N build/bench train-step --batch B ...`) --batch is the global
// batch: each rank steps on B / N images and the gradients are averaged with one all-reduce
// (as byol and fixmatch do); rank 0 reports the step time, the global images/s and the
// all-reduce's share. bench/distributed_scaling.sh runs 1 and N ranks and prints the scaling
// efficiency. bench/torch_train_step.py is
// PyTorch's side of the same measurement.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>
#include <utility>

#include <sys/resource.h>
#include <vector>

#include "apps/run/distributed_run.h"
#include "apps/tools/bench/bench.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/device.h"
#include "engine/distributed.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/optimizer.h"
#include "engine/workspace.h"
#include "models/model.h"
#if TESSERA_ONEDNN
#include "kernels/onednn/onednn.h"
#endif

namespace tessera {

int bench_train_step(int argc, char** argv) {
  ModelSpec spec;
  spec.arch = "resnet18";
  spec.stem = "cifar";
  spec.num_classes = 10;
  std::string device_flag = "cpu";
  std::string cpu_kernels_flag = default_cpu_kernels_flag();
  int size = 32, batch = 64, steps = 5, warmup = 2;
  profile::StepWindow profile_window;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help") {
      std::printf(
          "bench train-step [--arch resnet18|resnet34|resnet50|wrn-28-2|... (resnet18)] [--stem cifar|imagenet (cifar)]\n"
          "  [--width W (64)] [--in-channels 1|3 (3)] [--num-classes K (10)] [--size S (32)] [--batch B (64)]\n"
          "  [--steps N (5)] [--warmup N (2)] [--device auto|cpu|cuda (cpu)]\n"
          "  [--profile-steps A:B: per-kernel table of steps A..B-1, counting warm-up steps from 0]\n"
          "  [--cpu-kernels reference|fast (%s): CPU convolutions and linear gradients by the reference or by oneDNN]\n"
          "  [--conv-routing measured|onednn|winograd (measured, or $TESSERA_CONV_ROUTING): the fast tier's\n"
          "   passes by the measured table (kernels/onednn/conv.cpp), all on oneDNN's direct algorithm, or all\n"
          "   on oneDNN with Winograd for every 3x3 stride-1 convolution it takes]\n",
          cpu_kernels_flag.c_str());
      return 0;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(cat("unexpected argument '", a, "' (flags are --name value; see --help)"));
    if (i + 1 >= argc) throw UsageError(cat(a, ": expected a value"));
    const std::string v = argv[++i];
    {
      const int kMax = 1 << 30;  // a bound the sizes below multiply under without overflowing int64
      if (a == "--arch") spec.arch = v;
      else if (a == "--stem") spec.stem = v;
      else if (a == "--width") spec.width = bench_int(a, v, 1, 1 << 16);
      else if (a == "--in-channels") spec.in_channels = bench_int(a, v, 1, 3);
      else if (a == "--num-classes") spec.num_classes = bench_int(a, v, 1, 1 << 20);
      else if (a == "--size") size = bench_int(a, v, 1, 1 << 14);
      else if (a == "--batch") batch = bench_int(a, v, 1, 1 << 20);
      else if (a == "--steps") steps = bench_int(a, v, 1, kMax);
      else if (a == "--warmup") warmup = bench_int(a, v, 0, kMax);
      else if (a == "--device") device_flag = v;
      else if (a == "--profile-steps") profile_window = profile::StepWindow::parse(v);
      else if (a == "--cpu-kernels") cpu_kernels_flag = v;
      else if (a == "--conv-routing") {
        if (v != "measured" && v != "onednn" && v != "winograd")
          throw UsageError(cat("--conv-routing: expected measured, onednn or winograd, found '", v, "'"));
#if TESSERA_ONEDNN
        kernels::onednn::set_conv_routing(kernels::onednn::parse_conv_routing(v, "--conv-routing"));
#endif
      }
      else throw UsageError(cat("unknown flag '", a, "' (see --help)"));
    }
  }
  if (size < 1 || batch < 1 || steps < 1 || warmup < 0)
    throw UsageError(cat("--size, --batch and --steps must be >= 1 and --warmup >= 0, found ", size, ", ", batch,
                         ", ", steps, ", ", warmup));
  if (const std::string p = spec.problem(); !p.empty()) throw UsageError(p);
  if (spec.num_classes < 1) throw UsageError("--num-classes: the step needs a classifier, expected >= 1");

  dist::set_program_name("bench");
  dist::Communicator& ranks = dist::world();
  std::printf("processes: %s\n", ranks.description().c_str());
  std::fflush(stdout);
  dist::silence_other_ranks(ranks);
  if (batch % ranks.size() != 0)
    throw UsageError(cat("--batch ", batch, " is the global batch: expected a multiple of the ", ranks.size(),
                         " ranks, found ", batch));
  const int global_batch = batch;
  batch /= ranks.size();  // this rank's shard

  std::string note;
  const Device device = select_rank_device(ranks, device_flag, &note);
  std::printf("%s\n", note.c_str());
  const std::string kernels_note = select_cpu_kernels(cpu_kernels_flag);  // UsageError on a bad value
  if (device == Device::CPU) std::printf("%s\n", kernels_note.c_str());
  std::unique_ptr<Model> model = make_model(spec, device);
  OptimizerConfig oc;
  oc.momentum = 0.9f;
  Optimizer sgd(model->param_table(), device, oc);

  // One fixed batch: inputs in [-1, 1], labels cycling over the classes.
  OwnedTensor x(device, Shape{batch, spec.in_channels, size, size}), labels(device, Shape{batch}, DType::I32);
  std::vector<float> xs(static_cast<size_t>(x.t.numel()));
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = std::sin(0.001f * static_cast<float>(i) * static_cast<float>(i % 97));
  std::vector<int32_t> ls(static_cast<size_t>(batch));
  for (size_t i = 0; i < ls.size(); ++i) ls[i] = static_cast<int32_t>(i % static_cast<size_t>(spec.num_classes));
  from_host(x.t, xs);
  from_host(labels.t, ls);

  Workspace ws(device);
  Graph g(ws);
  std::vector<double> ms, cpu_ms, reduce_ms;  // wall, the process's CPU time (all threads), the all-reduce
  auto cpu_now = [] {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
  };
  float loss_value = 0;
  size_t forward_held = 0;  // workspace bytes live when the forward and loss are done
  profile::Profiler profiler(profile_window, device);
  for (int k = 0; k < warmup + steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_now();
    profiler.begin_step(k);
    profile::PhaseSequence phases;
    phases.enter("zero_grad");
    ws.reset();
    g.clear();
    model->grads().zero();
    phases.enter("student_forward");
    Var* logits = model->forward(g, g.input(x.t, "images"), /*train=*/true);
    phases.enter("loss");
    Var* loss = ops::cross_entropy(g, logits, labels.t);
    forward_held = ws.used();
    phases.enter("backward");
    g.backward(loss);
    synchronize(device);
    const auto r0 = std::chrono::steady_clock::now();
    if (ranks.size() > 1) {
      phases.enter("gradient_all_reduce");
      dist::all_reduce_mean_arena(ranks, model->grads(), "the gradients");
    }
    const double step_reduce_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - r0).count();
    phases.enter("optimizer");
    sgd.step(model->params(), model->grads(), 0.01f);
    phases.leave();
    synchronize(device);
    const double step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double step_cpu_ms = cpu_now() - c0;
    profiler.end_step(k);  // the last step of a window prints the table: not in step_ms
    if (k >= warmup) ms.push_back(step_ms), cpu_ms.push_back(step_cpu_ms), reduce_ms.push_back(step_reduce_ms);
    if (k + 1 == warmup + steps) loss_value = to_host_f32(loss->value)[0];
  }
  profiler.finish();
  if (const profile::Report* r = profiler.window_done() ? profiler.report() : nullptr) {
    // The table above is per (phase, kernel, layer); summed per kernel it says which families
    // are worth fusing (issue 14: anything above 5% of the step once the convolutions are fast).
    std::map<std::string, double> by_kernel;
    for (const auto& row : r->rows) by_kernel[row.kernel] += row.total_ms;
    std::vector<std::pair<double, std::string>> order;
    for (const auto& [name, total] : by_kernel) order.emplace_back(total, name);
    std::sort(order.rbegin(), order.rend());
    std::printf("per kernel (all layers and phases), share of the step:");
    for (const auto& [total, name] : order)
      std::printf(" %s %.1f%%", name.c_str(), r->step_ms > 0 ? 100 * total / r->step_ms : 0.0);
    std::printf("; outside kernels %.1f%%\n", r->step_ms > 0 ? 100 * r->outside_ms / r->step_ms : 0.0);
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  // On cores shared with other jobs the CPU time is the steadier number: with one thread it is
  // the step's own cost; with more it also counts OpenMP threads spinning at barriers.
  std::sort(cpu_ms.begin(), cpu_ms.end());
  const double cpu_median = cpu_ms[cpu_ms.size() / 2];
  const double images_per_s = global_batch / median * 1e3;  // all ranks together
  std::sort(reduce_ms.begin(), reduce_ms.end());
  const double reduce_median = reduce_ms[reduce_ms.size() / 2];
  if (ranks.size() > 1)
    std::printf("%d ranks, global batch %d (%d a rank): gradient all-reduce %.2f ms/step (median; %.1f%% of the step), "
                "%.2f MB a rank a step\n",
                ranks.size(), global_batch, batch, reduce_median, 100 * reduce_median / median,
                static_cast<double>(model->param_table().arena_numel()) * 4 / 1e6);
  // The workspace's peak: the step's activations and saved tensors plus the scratch region.
  const double mib = 1 << 20, peak_mb = static_cast<double>(ws.peak_bytes()) / mib;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double rss_mb = static_cast<double>(usage.ru_maxrss) / 1024.0;  // kB on Linux
  std::printf("%s %s stem, width %d, %dx%dx%d, batch %d on %s: median %.1f ms/step (%.1f images/s, CPU %.1f ms/step) over %d steps; "
              "workspace high-water %.1f MiB (step %.1f + scratch %.1f; held at the end of the forward %.1f); "
              "process peak RSS %.0f MiB; last loss %.4f\n",
              spec.arch.c_str(), spec.stem.c_str(), spec.width, spec.in_channels, size, size, batch,
              device_description(device).c_str(), median, images_per_s, cpu_median, steps, peak_mb,
              static_cast<double>(ws.high_water()) / mib, static_cast<double>(ws.scratch_high_water()) / mib,
              static_cast<double>(forward_held) / mib, rss_mb, loss_value);
  nlohmann::json j = {{"bench", "train-step"},      {"arch", spec.arch},       {"stem", spec.stem},
                      {"width", spec.width},        {"in_channels", spec.in_channels},
                      {"size", size},               {"batch", batch},          {"steps", steps},
                      {"device", device_name(device)}, {"device_description", device_description(device)},
                      {"cpu_kernels", cpu_kernels_name(cpu_kernels())},
                      {"ms_per_step", median},      {"images_per_s", images_per_s}, {"cpu_ms_per_step", cpu_median},
                      {"workspace_high_water_bytes", ws.peak_bytes()},
                      {"workspace_step_bytes", ws.high_water()}, {"workspace_scratch_bytes", ws.scratch_high_water()},
                      {"workspace_forward_held_bytes", forward_held}, {"peak_rss_mib", rss_mb},
                      {"ms_all", ms}, {"ranks", ranks.size()}, {"global_batch", global_batch},
                      {"all_reduce_ms_per_step", reduce_median},
                      {"loss", loss_value}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace tessera
