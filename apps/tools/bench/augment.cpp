// bench augment: throughput of one augmentation pipeline (data/augment.h) on generated images.
//   bench augment --recipe byol|fixmatch-weak|fixmatch-strong|normalize --device cpu|cuda
//                 [--batch 256] [--size 32] [--channels 3] [--seconds 2] [--seed 0]
// Times whole batches (BYOL: both views) drawn at random from 4096 images held on the device,
// as the loader would, and reports images/s (BYOL: two-view pairs/s). On CUDA the clock stops
// after a device synchronise, once, at the end of the timed loop. On the CPU it also reports
// throughput per CPU-second of the process (all threads): on a machine shared with other jobs
// wall-clock numbers understate what idle cores would do, and this one does not.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "apps/tools/bench/bench.h"
#include "data/augment.h"
#include "data/synthetic_images.h"
#include "engine/check.h"
#include "engine/device.h"
#include "kernels/common/philox.h"

namespace tessera {

namespace {

struct Flags {
  std::string recipe = "byol", device = "cpu";
  int batch = 256, size = 32, channels = 3;
  double seconds = 2.0;
  uint64_t seed = 0;
};

const char* kUsage =
    "usage: bench augment [--recipe byol|fixmatch-weak|fixmatch-strong|normalize (byol)]\n"
    "                     [--device auto|cpu|cuda (cpu)] [--batch B (256)] [--size S (32)]\n"
    "                     [--channels 1|3 (3)] [--seconds T (2)] [--seed N (0)]\n";

Flags parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a.rfind("--", 0) != 0) throw UsageError(cat("unexpected argument '", a, "' (flags are --name value; see --help)"));
    if (i + 1 >= argc) throw UsageError(cat(a, ": expected a value (see --help)"));
    const std::string v = argv[++i];
    if (a == "--recipe") f.recipe = v;
    else if (a == "--device") f.device = v;
    else if (a == "--batch") f.batch = bench_int(a, v, 1, 1 << 16);
    else if (a == "--size") f.size = bench_int(a, v, 8, 1024);
    else if (a == "--channels") {
      f.channels = bench_int(a, v, 1, 3);
      if (f.channels == 2) throw UsageError("--channels: expected 1 or 3, found 2");
    }
    else if (a == "--seconds") f.seconds = bench_int(a, v, 1, 600);
    else if (a == "--seed") f.seed = static_cast<uint64_t>(bench_int(a, v, 0, 1 << 30));
    else throw UsageError(cat("unknown flag '", a, "' (see --help)"));
  }
  return f;
}

}  // namespace

int bench_augment(int argc, char** argv) {
  const Flags f = parse(argc, argv);
  const data::Recipe recipe = data::parse_recipe(f.recipe);
  std::string note;
  const Device dev = select_device(f.device, &note);
  std::printf("%s\n", note.c_str());

  const int pool = 4096, C = f.channels, S = f.size;
  const std::vector<uint8_t> host = data::synthetic_images(pool, C, S, S, f.seed);
  OwnedTensor images(dev, Shape{pool, C, S, S}, DType::U8);
  copy_from_host(images.t, host.data(), host.size());
  const std::vector<float> mean(C, 0.5f), std(C, 0.25f);
  const data::AugmentPipeline pipeline(recipe, C, S, S, mean, std);
  const int views = pipeline.views();

  // Batches of random indices and their epochs (int64, as the loader hands them over),
  // uploaded once: the loader uploads each step's, a few KiB.
  const int batches = 16;
  const int64_t B = f.batch;
  std::vector<int64_t> keys(static_cast<size_t>(2 * batches * B));
  kernels::PhiloxState rng(f.seed, kernels::philox_subsequence(kernels::kStreamTest, 7), 0);
  for (int k = 0; k < batches; ++k)
    for (int64_t i = 0; i < B; ++i) {
      keys[static_cast<size_t>(2 * k * B + i)] = rng.next_u32() % pool;  // indices
      keys[static_cast<size_t>((2 * k + 1) * B + i)] = k;                // epochs
    }
  Buffer key_buffer(dev, keys.size() * 8);
  copy_from_host(key_buffer.view(Shape{static_cast<int64_t>(keys.size()) * 2}, DType::I32), keys.data(), keys.size() * 8);
  const Shape vs = pipeline.view_shape();
  std::vector<OwnedTensor> outs;
  for (int v = 0; v < views; ++v) outs.emplace_back(dev, Shape{B, vs[0], vs[1], vs[2]});
  OwnedTensor scratch(dev, Shape{B, vs[0], vs[1], vs[2]});

  auto step = [&](int64_t k) {
    const int64_t* idx = static_cast<const int64_t*>(key_buffer.data()) + 2 * (k % batches) * B;
    for (int v = 0; v < views; ++v)
      pipeline.run(dev, images.t.u8(), pool, idx, idx + B, B, v, f.seed, outs[v].t.f32(), scratch.t.f32());
  };
  step(0);  // warm-up: workspace growth, first-touch, CUDA module load
  synchronize(dev);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const std::clock_t cpu_start = std::clock();
  int64_t steps = 0;
  double elapsed = 0;
  while (elapsed < f.seconds) {
    for (int k = 0; k < 8; ++k) step(++steps);
    synchronize(dev);
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  const double cpu_s = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  const double per_s = static_cast<double>(steps) * f.batch / elapsed;
  const double per_cpu_s = static_cast<double>(steps) * f.batch / cpu_s;
  const double ms = 1e3 * elapsed / static_cast<double>(steps);
  const char* unit = views == 2 ? "pairs" : "images";
  std::printf("augment %s on %s: %dx%dx%d images, batch %d, %lld batches in %.2f s (%.2f CPU-s): %.2f ms/batch, "
              "%.0f %s/s, %.0f %s per CPU-second\n",
              data::recipe_name(recipe), device_description(dev).c_str(), C, S, S, f.batch, static_cast<long long>(steps),
              elapsed, cpu_s, ms, per_s, unit, per_cpu_s, unit);
  std::printf(
      "{\"bench\": \"augment\", \"recipe\": \"%s\", \"device\": \"%s\", \"batch\": %d, \"size\": %d, \"channels\": %d, "
      "\"views\": %d, \"ms_per_batch\": %.4f, \"%s_per_s\": %.1f, \"views_per_s\": %.1f, \"cpu_seconds\": %.3f, "
      "\"%s_per_cpu_s\": %.1f}\n",
      data::recipe_name(recipe), device_description(dev).c_str(), f.batch, S, C, views, ms, unit, per_s, per_s * views, cpu_s,
      unit, per_cpu_s);
  return 0;
}

}  // namespace tessera
