// Per-layer timing of the CPU convolution (kernels/cpu/conv.cpp) on the ResNet-18 cifar-stem
// layer shapes, batch 64, to set against bench/torch_conv_layers.py. Standalone (not part of
// the build); compile and run with the commands in bench/RESULTS.md.
#include <algorithm>
#include <ctime>
#include <cstdio>
#include <vector>

#include "kernels/conv.h"

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

int main() {
  const int64_t batch = 64;
  const Layer layers[] = {
      {"conv1 3-64 32px", 1, 3, 64, 32, 3, 1},      {"layer1 64-64 32px", 4, 64, 64, 32, 3, 1},
      {"layer2.0 64-128 s2", 1, 64, 128, 32, 3, 2}, {"layer2 ds 1x1 s2", 1, 64, 128, 32, 1, 2},
      {"layer2 128-128 16px", 3, 128, 128, 16, 3, 1}, {"layer3.0 128-256 s2", 1, 128, 256, 16, 3, 2},
      {"layer3 ds 1x1 s2", 1, 128, 256, 16, 1, 2},  {"layer3 256-256 8px", 3, 256, 256, 8, 3, 1},
      {"layer4.0 256-512 s2", 1, 256, 512, 8, 3, 2}, {"layer4 ds 1x1 s2", 1, 256, 512, 8, 1, 2},
      {"layer4 512-512 4px", 3, 512, 512, 4, 3, 1},
  };
  double total_f = 0, total_b = 0;
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
    kernels::cpu::conv2d_workspace_size(s, &bytes);
    std::vector<float> ws(bytes / sizeof(float) + 1);
    std::vector<double> tf, tb;
    for (int r = 0; r < 8; ++r) {
      const double t0 = now_ms();
      kernels::cpu::conv2d_forward(s, x.data(), w.data(), nullptr, y.data(), ws.data(), bytes);
      const double t1 = now_ms();
      kernels::cpu::conv2d_backward(s, x.data(), w.data(), y.data(), l.c == 3 ? nullptr : dx.data(), dw.data(),
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
