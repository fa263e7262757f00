// Per-layer timing of the CPU convolution (kernels/cpu/conv.cpp) on the ResNet-18 cifar-stem
// layer shapes, to set against bench/torch_conv_layers.py. Standalone (not part of the build);
// compile and run with the commands in bench/RESULTS.md.
//   conv_layers [--width 64] [--size 32] [--in-channels 3] [--batch 64]
// The defaults are ResNet-18 at CIFAR size; `--width 16 --size 28 --in-channels 1 --batch 256`
// are the shapes of the Fashion-MNIST demo (batch 128, two views per image).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cpu/blas_kernels.h"

namespace {

struct Layer {
  const char* name;
  int count;  // how many convs of this shape one resnet18 forward runs
  int64_t c, o, h, k, stride;
};

// Process CPU time (all threads), not wall time: on cores shared with other jobs it counts
// only the time this process ran, so it stays comparable when the machine is busy. With one
// thread it is the kernel's own cost; with two it adds any time a thread spent waiting.
double now_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

double best_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[0];  // the minimum: the cores are shared, and the fastest run is the least disturbed
}

}  // namespace

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  int64_t width = 64, size = 32, in_channels = 3, batch = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int64_t value = std::atoll(argv[i + 1]);
    if (flag == "--width") width = value;
    else if (flag == "--size") size = value;
    else if (flag == "--in-channels") in_channels = value;
    else if (flag == "--batch") batch = value;
    else {
      std::fprintf(stderr, "conv_layers: unknown flag %s (expected --width, --size, --in-channels, --batch)\n",
                   argv[i]);
      return 2;
    }
  }
  // Stage s (1..4) has width << (s-1) channels at side size >> (s-1), rounded up as a stride-2 conv does.
  auto side = [&](int stage) {
    int64_t h = size;
    for (int i = 1; i < stage; ++i) h = (h + 1) / 2;
    return h;
  };
  const int64_t w1 = width, w2 = 2 * width, w3 = 4 * width, w4 = 8 * width;
  const Layer layers[] = {
      {"conv1", 1, in_channels, w1, side(1), 3, 1},   {"layer1 3x3", 4, w1, w1, side(1), 3, 1},
      {"layer2.0 3x3 s2", 1, w1, w2, side(1), 3, 2}, {"layer2 ds 1x1 s2", 1, w1, w2, side(1), 1, 2},
      {"layer2 3x3", 3, w2, w2, side(2), 3, 1},      {"layer3.0 3x3 s2", 1, w2, w3, side(2), 3, 2},
      {"layer3 ds 1x1 s2", 1, w2, w3, side(2), 1, 2}, {"layer3 3x3", 3, w3, w3, side(3), 3, 1},
      {"layer4.0 3x3 s2", 1, w3, w4, side(3), 3, 2}, {"layer4 ds 1x1 s2", 1, w3, w4, side(3), 1, 2},
      {"layer4 3x3", 3, w4, w4, side(4), 3, 1},
  };
  double total_f = 0, total_b = 0;
  std::printf("width %lld, %lldx%lld, %lld input channels, batch %lld\n", static_cast<long long>(width),
              static_cast<long long>(size), static_cast<long long>(size), static_cast<long long>(in_channels),
              static_cast<long long>(batch));
  std::printf("%-22s %5s %10s %10s\n", "layer", "count", "fwd ms", "bwd ms");
  for (const Layer& l : layers) {
    kernels::Conv2dShape s;
    s.n = batch; s.c = l.c; s.h = s.w = l.h; s.o = l.o; s.kh = s.kw = l.k; s.stride = l.stride;
    s.pad = l.k / 2;
    s.ho = (s.h + 2 * s.pad - s.kh) / s.stride + 1;
    s.wo = s.ho;
    std::vector<float> x(s.n * s.c * s.h * s.w, 0.5f), w(s.o * s.c * s.kh * s.kw, 0.01f),
        y(s.n * s.o * s.ho * s.wo), dx(x.size()), dw(w.size());
    size_t bytes = 0;
    kernels::cpu::conv2d_workspace_size(s, kernels::ConvPass::Backward, &bytes);  // >= the forward's
    std::vector<float> ws(bytes / sizeof(float) + 1);
    std::vector<double> tf, tb;
    for (int r = 0; r < 8; ++r) {
      const double t0 = now_ms();
      kernels::cpu::conv2d_forward(s, x.data(), w.data(), nullptr, y.data(), ws.data(), bytes);
      const double t1 = now_ms();
      kernels::cpu::conv2d_backward(s, x.data(), w.data(), y.data(), l.c == in_channels ? nullptr : dx.data(), dw.data(),
                                    nullptr, ws.data(), bytes);
      const double t2 = now_ms();
      if (r == 0) continue;  // warm-up
      tf.push_back(t1 - t0);
      tb.push_back(t2 - t1);
    }
    const double f = best_ms(tf), b = best_ms(tb);
    total_f += f * l.count;
    total_b += b * l.count;
    std::printf("%-22s %5d %10.2f %10.2f\n", l.name, l.count, f, b);
  }
  std::printf("sum over one resnet18 step: forward %.1f ms, backward %.1f ms, total %.1f ms\n", total_f, total_b,
              total_f + total_b);
  std::printf("{\"conv_forward_ms\": %.1f, \"conv_backward_ms\": %.1f}\n", total_f, total_b);
}
