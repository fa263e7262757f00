// Per-layer timing of the CPU convolution on the ResNet-18 cifar-stem layer shapes, to set
// against bench/torch_conv_layers.py: the reference (kernels/cpu/conv.cpp, im2col + OpenBLAS)
// or the fast tier (kernels/onednn/conv.cpp, oneDNN) with the activation layout it is asked
// for. Standalone (not part of the build); compile and run with the commands in bench/RESULTS.md.
//   conv_layers [--width 64] [--size 32] [--in-channels 3] [--batch 64] [--net resnet18|wrn-D-k]
//               [--kernels reference|fast] [--layout blocked|plain|nhwc] [--split 1]
// --split 1 times the data and the filter gradient as two calls (two more columns).
// The defaults are ResNet-18 at CIFAR size; `--width 16 --size 28 --in-channels 1 --batch 256`
// are the shapes of the Fashion-MNIST demo (batch 128, two views per image). `--net wrn-10-2
// --size 28 --in-channels 1 --batch 224` are FixMatch's on Fashion-MNIST (32 labeled + 192
// unlabeled views); a WRN's widths come from k (--width is ResNet-18's).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cpu/blas_kernels.h"
#if TESSERA_ONEDNN
#include "kernels/onednn/onednn.h"
#endif

namespace {

struct Layer {
  std::string name;
  int count;  // how many convs of this shape one forward of the net runs
  int64_t c, o, h, k, stride;  // h: the input's side
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
  bool fast = false, split = false;
  std::string net = "resnet18";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int64_t value = std::atoll(argv[i + 1]);
    const std::string text = argv[i + 1];
    if (flag == "--kernels" && (text == "reference" || text == "fast")) fast = text == "fast";
#if TESSERA_ONEDNN
    else if (flag == "--layout" && text == "blocked") kernels::onednn::set_layout(kernels::onednn::Layout::Blocked);
    else if (flag == "--layout" && text == "plain") kernels::onednn::set_layout(kernels::onednn::Layout::Plain);
    else if (flag == "--layout" && text == "nhwc") kernels::onednn::set_layout(kernels::onednn::Layout::Nhwc);
#endif
    else if (flag == "--split") split = value != 0;
    else if (flag == "--net" && (text == "resnet18" || text.rfind("wrn-", 0) == 0)) net = text;
    else if (flag == "--width") width = value;
    else if (flag == "--size") size = value;
    else if (flag == "--in-channels") in_channels = value;
    else if (flag == "--batch") batch = value;
    else {
      std::fprintf(stderr,
                   "conv_layers: bad flag %s %s (expected --width, --size, --in-channels, --batch, "
                   "--net resnet18|wrn-D-k, --kernels reference|fast, --layout blocked|plain|nhwc)\n",
                   argv[i], argv[i + 1]);
      return 2;
    }
  }
  // Stage s (1..4) has width << (s-1) channels at side size >> (s-1), rounded up as a stride-2 conv does.
  auto side = [&](int stage) {
    int64_t h = size;
    for (int i = 1; i < stage; ++i) h = (h + 1) / 2;
    return h;
  };
  std::vector<Layer> layers;
  if (net == "resnet18") {
    const int64_t w1 = width, w2 = 2 * width, w3 = 4 * width, w4 = 8 * width;
    layers = {
        {"conv1", 1, in_channels, w1, side(1), 3, 1},   {"layer1 3x3", 4, w1, w1, side(1), 3, 1},
        {"layer2.0 3x3 s2", 1, w1, w2, side(1), 3, 2}, {"layer2 ds 1x1 s2", 1, w1, w2, side(1), 1, 2},
        {"layer2 3x3", 3, w2, w2, side(2), 3, 1},      {"layer3.0 3x3 s2", 1, w2, w3, side(2), 3, 2},
        {"layer3 ds 1x1 s2", 1, w2, w3, side(2), 1, 2}, {"layer3 3x3", 3, w3, w3, side(3), 3, 1},
        {"layer4.0 3x3 s2", 1, w3, w4, side(3), 3, 2}, {"layer4 ds 1x1 s2", 1, w3, w4, side(3), 1, 2},
        {"layer4 3x3", 3, w4, w4, side(4), 3, 1},
    };
  } else {  // models/wide_resnet.cpp: a 16-channel stem, then 3 groups of (D - 4) / 6 blocks, 16k, 32k, 64k wide
    int depth = 0, k = 0;
    if (std::sscanf(net.c_str(), "wrn-%d-%d", &depth, &k) != 2 || depth < 10 || (depth - 4) % 6 != 0 || k < 1) {
      std::fprintf(stderr, "conv_layers: --net %s: expected wrn-D-k with D = 6n + 4 >= 10, k >= 1\n", net.c_str());
      return 2;
    }
    const int blocks = (depth - 4) / 6;
    layers.push_back({"conv1", 1, in_channels, 16, side(1), 3, 1});
    int64_t in = 16;
    for (int g = 1; g <= 3; ++g) {
      const int64_t out = (16 * k) << (g - 1), stride = g == 1 ? 1 : 2, h = side(g > 1 ? g - 1 : 1);
      const std::string b = "block" + std::to_string(g);
      layers.push_back({b + ".0.conv1 3x3" + (stride == 2 ? " s2" : ""), 1, in, out, h, 3, stride});
      layers.push_back({b + ".0.shortcut 1x1" + (stride == 2 ? " s2" : ""), 1, in, out, h, 1, stride});
      layers.push_back({b + " 3x3", 2 * blocks - 1, out, out, side(g), 3, 1});  // conv2 of block 0, both of the rest
      in = out;
    }
  }
  double total_f = 0, total_b = 0;
#if TESSERA_ONEDNN
  const std::string tier = fast ? kernels::onednn::runtime_description() : "reference (im2col + OpenBLAS)";
#else
  if (fast) {
    std::fprintf(stderr, "conv_layers: built without oneDNN (-DTESSERA_ONEDNN=1 -ldnnl): no fast tier\n");
    return 2;
  }
  const std::string tier = "reference (im2col + OpenBLAS)";
#endif
  // The kernels of the tier asked for; the fast tier exists only with oneDNN.
  auto workspace_size = [&](const kernels::Conv2dShape& s, kernels::ConvPass pass, size_t* bytes) {
#if TESSERA_ONEDNN
    if (fast) return kernels::onednn::conv2d_workspace_size(s, pass, bytes);
#endif
    kernels::cpu::conv2d_workspace_size(s, pass, bytes);
  };
  auto forward = [&](auto... args) {
#if TESSERA_ONEDNN
    if (fast) return kernels::onednn::conv2d_forward(args...);
#endif
    kernels::cpu::conv2d_forward(args...);
  };
  auto backward = [&](auto... args) {
#if TESSERA_ONEDNN
    if (fast) return kernels::onednn::conv2d_backward(args...);
#endif
    kernels::cpu::conv2d_backward(args...);
  };
  std::printf("%s; %s%s, %lldx%lld, %lld input channels, batch %lld\n", tier.c_str(), net.c_str(),
              net == "resnet18" ? (" width " + std::to_string(width)).c_str() : "", static_cast<long long>(size),
              static_cast<long long>(size),
              static_cast<long long>(in_channels), static_cast<long long>(batch));
  std::printf("%-22s %5s %10s %10s%s\n", "layer", "count", "fwd ms", "bwd ms", split ? "    data ms weights ms" : "");
  for (const Layer& l : layers) {
    kernels::Conv2dShape s;
    s.n = batch; s.c = l.c; s.h = s.w = l.h; s.o = l.o; s.kh = s.kw = l.k; s.stride = l.stride;
    s.pad = l.k / 2;
    s.ho = (s.h + 2 * s.pad - s.kh) / s.stride + 1;
    s.wo = s.ho;
    std::vector<float> x(s.n * s.c * s.h * s.w, 0.5f), w(s.o * s.c * s.kh * s.kw, 0.01f),
        y(s.n * s.o * s.ho * s.wo), dx(x.size()), dw(w.size());
    size_t fwd_bytes = 0, bwd_bytes = 0;
    workspace_size(s, kernels::ConvPass::Forward, &fwd_bytes);
    workspace_size(s, kernels::ConvPass::Backward, &bwd_bytes);
    const size_t bytes = std::max(fwd_bytes, bwd_bytes);
    std::vector<float> ws(bytes / sizeof(float) + 1);
    std::vector<double> tf, tb, td, tw;
    const bool first = &l == &layers.front();  // conv1: no data gradient
    for (int r = 0; r < 8; ++r) {
      if (split) {
        const double t0 = now_ms();
        if (!first) backward(s, x.data(), w.data(), y.data(), dx.data(), nullptr, nullptr, true, ws.data(), bytes);
        const double t1 = now_ms();
        backward(s, x.data(), w.data(), y.data(), nullptr, dw.data(), nullptr, true, ws.data(), bytes);
        const double t2 = now_ms();
        if (r > 0) td.push_back(t1 - t0), tw.push_back(t2 - t1);
      }
      const double t0 = now_ms();
      forward(s, x.data(), w.data(), nullptr, y.data(), ws.data(), bytes);
      const double t1 = now_ms();
      backward(s, x.data(), w.data(), y.data(), first ? nullptr : dx.data(), dw.data(), nullptr, true,
               ws.data(), bytes);
      const double t2 = now_ms();
      if (r == 0) continue;  // warm-up
      tf.push_back(t1 - t0);
      tb.push_back(t2 - t1);
    }
    const double f = best_ms(tf), b = best_ms(tb);
    total_f += f * l.count;
    total_b += b * l.count;
    std::printf("%-22s %5d %10.2f %10.2f", l.name.c_str(), l.count, f, b);
    if (split) std::printf(" %10.2f %10.2f", best_ms(td), best_ms(tw));
    std::printf("\n");
#if TESSERA_ONEDNN
    if (fast) std::printf("    %s\n", kernels::onednn::conv2d_implementations(s).c_str());
#endif
  }
  std::printf("sum over one %s step: forward %.1f ms, backward %.1f ms, total %.1f ms\n", net.c_str(), total_f, total_b,
              total_f + total_b);
  std::printf("{\"conv_forward_ms\": %.1f, \"conv_backward_ms\": %.1f}\n", total_f, total_b);
}
