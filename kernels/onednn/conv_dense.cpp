// The fast tier's convolution on maps no wider than the kernel's reach, as one dense GEMM per
// pass (oneDNN's sgemm). When every output pixel's window covers the whole input map (a 3x3
// kernel with padding 1 on a 1x1 or 2x2 map, or a stride-2 3x3 from 2x2 to 1x1: the last stages
// of a ResNet on 28 px images), the convolution is a fully connected layer from the C H W inputs
// of a sample to its O HO WO outputs, whose weight matrix (the Toeplitz form of w) holds each
// tap where it applies:
//
//   Wd[(o, i, j), (c, r, q)] = w[o, c, r - i stride + pad, q - j stride + pad]
//   y = x Wd^T          dx = dy Wd          dWd = dy^T x,  dw[o, c, u, v] += the dWd entries of tap (u, v)
//
// with x as (N, C H W) and y as (N, O HO WO): the engine's NCHW tensors as they lie, so no
// reorder at all. The direct kernels sweep every tap over every output pixel, most of them over
// padding on such maps (8 of 9 on a 1x1 map, 5 of 9 on 2x2): the GEMM does only the products
// that count, on oneDNN's sgemm (150-200 GFLOP/s at these sizes on the 2-core AVX-512 machine,
// 1.4x OpenBLAS's; the direct kernels did 25-50 GFLOP/s of useful work here, their backward
// 2-4x their forward). Per layer of the BYOL demo, batch 128, one thread, CPU ms forward /
// backward (bench/conv_layers.cpp, bench/RESULTS.md): layer3 3x3 0.35 / 0.75 -> 0.22 / 0.47,
// layer4.0 0.24 / 0.85 -> 0.12 / 0.25, layer4 3x3 0.17 / 0.63 -> 0.07 / 0.15.
//
// Cost: 2 N (O HO WO) (C H W) flops per pass, the taps that touch the image only; plus building
// Wd (O C HO WO H W floats, from w) per forward and backward and folding dWd back into dw.
// Scratch: the tap table, then one Wd (or dWd) of O HO WO x C H W floats, 64 KB to 256 KB on
// the BYOL demo's shapes; nothing is allocated.
// The sums run in another order than the reference's (the filter gradient: over the batch in
// the GEMM, then over the pixels that share a tap in the fold), so results agree to rounding
// (tests/conv_fast_test.cpp, ConvFast.Dense*).
#include "kernels/onednn/conv_dense.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>

#include "kernels/conv.h"

namespace kernels::onednn {
namespace {

// Whether, along one axis, every output position's window covers every input position.
bool covers(int64_t in, int64_t kernel, int64_t out, int64_t stride, int64_t pad) {
  return (out - 1) * stride <= pad && kernel - 1 - pad >= in - 1;
}

int64_t rows(const Conv2dShape& s) { return s.o * s.ho * s.wo; }  // of Wd: output features per sample
int64_t cols(const Conv2dShape& s) { return s.c * s.h * s.w; }    // of Wd: input features per sample

// Where the taps of one (output channel, input channel) pair sit: Wd's block for the pair (HO WO
// rows by H W columns, at rows o HO WO.., columns c H W..) holds, at (row, col), the pair's tap
// `tap` (u KW + v). The same for every pair, so listed once per call (in the scratch, before Wd:
// HO WO H W entries, 16 on a 2x2 map) and walked for each.
struct Entry {
  int32_t row, col, tap;
};
int64_t entry_count(const Conv2dShape& s) { return s.ho * s.wo * s.h * s.w; }

// Lists the entries into `e` and returns where Wd starts in the scratch, right after them.
float* list_entries(const Conv2dShape& s, Entry* e) {
  for (int64_t i = 0; i < s.ho; ++i)
    for (int64_t j = 0; j < s.wo; ++j)
      for (int64_t r = 0; r < s.h; ++r)
        for (int64_t q = 0; q < s.w; ++q)
          *e++ = {static_cast<int32_t>(i * s.wo + j), static_cast<int32_t>(r * s.w + q),
                  static_cast<int32_t>((r - i * s.stride + s.pad) * s.kw + (q - j * s.stride + s.pad))};
  return reinterpret_cast<float*>(e);
}

// Wd (rows x cols) from w; `transposed`: Wd^T (cols x rows) instead. Threads split the output
// channels (each writes its own rows, or its own run of every column of Wd^T).
void build(const Conv2dShape& s, const Entry* entries, const float* w, float* wd, bool transposed) {
  const int64_t m = rows(s), k = cols(s), out_pixels = s.ho * s.wo, in_pixels = s.h * s.w, taps = s.kh * s.kw;
  const Entry* end = entries + entry_count(s);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < s.o; ++o)
    for (int64_t c = 0; c < s.c; ++c) {
      const float* pair = w + (o * s.c + c) * taps;
      const int64_t row0 = o * out_pixels, col0 = c * in_pixels;
      if (transposed)
        for (const Entry* e = entries; e != end; ++e) wd[(col0 + e->col) * m + row0 + e->row] = pair[e->tap];
      else
        for (const Entry* e = entries; e != end; ++e) wd[(row0 + e->row) * k + col0 + e->col] = pair[e->tap];
    }
}

// dw += the entries of dWd (rows x cols) that each tap applies to. Threads split the output channels.
void fold(const Conv2dShape& s, const Entry* entries, const float* dwd, float* dw) {
  const int64_t k = cols(s), out_pixels = s.ho * s.wo, in_pixels = s.h * s.w, taps = s.kh * s.kw;
  const Entry* end = entries + entry_count(s);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < s.o; ++o)
    for (int64_t c = 0; c < s.c; ++c) {
      float* pair = dw + (o * s.c + c) * taps;
      const int64_t row0 = o * out_pixels, col0 = c * in_pixels;
      for (const Entry* e = entries; e != end; ++e) pair[e->tap] += dwd[(row0 + e->row) * k + col0 + e->col];
    }
}

void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
           int64_t ldb, float beta, float* c, int64_t ldc) {
  dnnl::sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

bool conv2d_is_dense(const Conv2dShape& s) {
  return covers(s.h, s.kh, s.ho, s.stride, s.pad) && covers(s.w, s.kw, s.wo, s.stride, s.pad);
}

size_t dense_workspace_size(const Conv2dShape& s) {
  return static_cast<size_t>(entry_count(s)) * sizeof(Entry) + static_cast<size_t>(rows(s) * cols(s)) * sizeof(float);
}

void dense_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* scratch) {
  const int64_t m = rows(s), k = cols(s);
  Entry* entries = static_cast<Entry*>(scratch);
  float* wd = list_entries(s, entries);
  build(s, entries, w, wd, /*transposed=*/true);
  sgemm('N', 'N', s.n, m, k, x, k, wd, m, 0.0f, y, m);  // y (N, m) = x (N, k) Wd^T (k, m)
  if (!b) return;
  const int64_t pixels = s.ho * s.wo;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t o = 0; o < s.o; ++o)
      for (int64_t p = 0; p < pixels; ++p) y[(i * s.o + o) * pixels + p] += b[o];
}

void dense_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                    float* db, bool accumulate_dx, void* scratch) {
  const int64_t m = rows(s), k = cols(s);
  Entry* entries = static_cast<Entry*>(scratch);
  float* wd = list_entries(s, entries);
  if (db) kernels::cpu::conv2d_bias_gradient(s, dy, db);
  if (dx) {
    build(s, entries, w, wd, /*transposed=*/false);
    // dx (N, k) (+)= dy (N, m) Wd (m, k); beta 0 writes dx without reading it.
    sgemm('N', 'N', s.n, k, m, dy, m, wd, k, accumulate_dx ? 1.0f : 0.0f, dx, k);
  }
  if (dw) {
    sgemm('T', 'N', m, k, s.n, dy, m, x, k, 0.0f, wd, k);  // dWd (m, k) = dy^T (m, N) x (N, k)
    fold(s, entries, wd, dw);
  }
}

}  // namespace kernels::onednn
