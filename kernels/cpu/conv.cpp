// CPU reference of kernels/conv.h: im2col + OpenBLAS sgemm.
//
// Why a chunk of images per GEMM rather than one GEMM per image: in the deep layers of a
// ResNet an image has few output pixels (4x4 at 32 px input), so a per-image GEMM is a thin
// (O x C*9) * (C*9 x 16) product that no BLAS runs fast. Laying the columns of `nb` images side
// by side gives one (O x K) * (K x nb*P) product with a wide N, which OpenBLAS runs at close to
// its peak on both cores (its OpenMP threads, outside any parallel region of ours, so the two
// pools never compete). The price is a transposed copy of the output (y is (N, O, P), the GEMM
// gives (O, N*P)), which is one pass over y, small next to the GEMM. Measured against the
// alternative (images in parallel, one BLAS thread each) in bench/RESULTS.md.
//
// The backward reuses the same layout: dy is gathered once per chunk into (O, nb*P); the filter
// gradient is one GEMM dW += dY * cols^T with the long nb*P dimension as its inner sum, the data
// gradient one GEMM cols = W^T dY followed by col2im, which adds the columns back into dx.
// Columns are recomputed from x in the backward instead of being kept from the forward: they
// are KH*KW times the size of x, and rebuilding them costs one pass over memory.
#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "kernels/conv.h"
#include "kernels/cpu/blas_core.h"

namespace kernels::cpu {
namespace {

// Referencing blas_core.cpp links it, and with it its start-up choice of OpenBLAS kernels
// that the GEMMs below depend on for their speed.
[[maybe_unused]] const char* (*const kBlasCore)() = &blas_core_name;

// Bytes of im2col columns (plus the matching slice of output) one chunk may use. 32 MiB keeps
// the GEMMs wide (a 64-image chunk for every layer past the first stage of a CIFAR ResNet)
// while bounding the scratch for large images.
constexpr size_t kChunkBudgetBytes = size_t{32} << 20;

int64_t rows_of(const Conv2dShape& s) { return s.c * s.kh * s.kw; }  // K of the GEMM
int64_t pixels_of(const Conv2dShape& s) { return s.ho * s.wo; }      // P: output pixels per image

int64_t chunk_images(const Conv2dShape& s) {
  const size_t per_image = static_cast<size_t>((rows_of(s) + s.o) * pixels_of(s)) * sizeof(float);
  const int64_t nb = static_cast<int64_t>(kChunkBudgetBytes / std::max<size_t>(per_image, 1));
  return std::clamp<int64_t>(nb, 1, s.n);
}

// Output columns [lo, hi) of a row whose input column wo*stride - pad + v lies inside [0, W).
void valid_columns(const Conv2dShape& s, int64_t v, int64_t* lo, int64_t* hi) {
  // wo*stride - pad + v >= 0  <=>  wo >= ceil((pad - v) / stride)
  const int64_t first = s.pad - v > 0 ? (s.pad - v + s.stride - 1) / s.stride : 0;
  // wo*stride - pad + v <= W - 1  <=>  wo <= floor((W - 1 + pad - v) / stride)
  const int64_t last_num = s.w - 1 + s.pad - v;
  const int64_t end = last_num < 0 ? 0 : last_num / s.stride + 1;
  *lo = std::min(first, s.wo);
  *hi = std::clamp(end, *lo, s.wo);
}

// cols (K, nb*P): row k = (c, u, v), column i*P + (i_out*WO + j_out) for image i of the chunk.
// x points at the chunk's first image.
void im2col(const Conv2dShape& s, const float* x, int64_t nb, float* cols) {
  const int64_t K = rows_of(s), P = pixels_of(s), L = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t c = k / (s.kh * s.kw), u = (k / s.kw) % s.kh, v = k % s.kw;
      const float* plane = x + (i * s.c + c) * s.h * s.w;
      float* out = cols + k * L + i * P;
      int64_t lo, hi;
      valid_columns(s, v, &lo, &hi);
      for (int64_t r = 0; r < s.ho; ++r, out += s.wo) {
        const int64_t hi_row = r * s.stride - s.pad + u;
        if (hi_row < 0 || hi_row >= s.h) {
          std::memset(out, 0, sizeof(float) * static_cast<size_t>(s.wo));
          continue;
        }
        const float* in = plane + hi_row * s.w - s.pad + v;
        for (int64_t j = 0; j < lo; ++j) out[j] = 0.0f;
        if (s.stride == 1) {
          std::memcpy(out + lo, in + lo, sizeof(float) * static_cast<size_t>(hi - lo));
        } else {
          for (int64_t j = lo; j < hi; ++j) out[j] = in[j * s.stride];
        }
        for (int64_t j = hi; j < s.wo; ++j) out[j] = 0.0f;
      }
    }
  }
}

// dx += col2im(cols): the adjoint of im2col. Parallel over (image, channel) planes of dx, so
// no two threads add into the same element.
void col2im_add(const Conv2dShape& s, const float* cols, int64_t nb, float* dx) {
  const int64_t P = pixels_of(s), L = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t c = 0; c < s.c; ++c) {
      float* plane = dx + (i * s.c + c) * s.h * s.w;
      for (int64_t u = 0; u < s.kh; ++u) {
        for (int64_t v = 0; v < s.kw; ++v) {
          const float* in = cols + ((c * s.kh + u) * s.kw + v) * L + i * P;
          int64_t lo, hi;
          valid_columns(s, v, &lo, &hi);
          for (int64_t r = 0; r < s.ho; ++r, in += s.wo) {
            const int64_t hi_row = r * s.stride - s.pad + u;
            if (hi_row < 0 || hi_row >= s.h) continue;
            float* out = plane + hi_row * s.w - s.pad + v;
            if (s.stride == 1) {
#pragma omp simd
              for (int64_t j = lo; j < hi; ++j) out[j] += in[j];
            } else {
              for (int64_t j = lo; j < hi; ++j) out[j * s.stride] += in[j];
            }
          }
        }
      }
    }
  }
}

}  // namespace

void conv2d_workspace_size(const Conv2dShape& s, size_t* bytes) {
  *bytes = static_cast<size_t>(chunk_images(s) * (rows_of(s) + s.o) * pixels_of(s)) * sizeof(float);
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    void* workspace, size_t /*workspace_bytes*/) {
  const int64_t K = rows_of(s), P = pixels_of(s), nb_max = chunk_images(s);
  float* cols = static_cast<float*>(workspace);
  float* out = cols + nb_max * K * P;  // (O, nb*P)
  for (int64_t n0 = 0; n0 < s.n; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.n - n0), L = nb * P;
    im2col(s, x + n0 * s.c * s.h * s.w, nb, cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(s.o), static_cast<int>(L),
                static_cast<int>(K), 1.0f, w, static_cast<int>(K), cols, static_cast<int>(L), 0.0f, out,
                static_cast<int>(L));
    // (O, nb*P) -> (nb, O, P), adding the bias on the way.
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t o = 0; o < s.o; ++o) {
        const float bias = b ? b[o] : 0.0f;
        const float* src = out + o * L + i * P;
        float* dst = y + ((n0 + i) * s.o + o) * P;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) dst[p] = src[p] + bias;
      }
    }
  }
}

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, void* workspace, size_t /*workspace_bytes*/) {
  const int64_t K = rows_of(s), P = pixels_of(s), nb_max = chunk_images(s);
  if (db) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < s.o; ++o) {
      double total = 0;  // N*P terms: sum in double so the result does not depend on N
      for (int64_t n = 0; n < s.n; ++n) {
        const float* row = dy + (n * s.o + o) * P;
        float part = 0;
#pragma omp simd reduction(+ : part)
        for (int64_t p = 0; p < P; ++p) part += row[p];
        total += part;
      }
      db[o] += static_cast<float>(total);
    }
  }
  if (!dx && !dw) return;
  float* cols = static_cast<float*>(workspace);
  float* grad = cols + nb_max * K * P;  // dY of the chunk, (O, nb*P)
  for (int64_t n0 = 0; n0 < s.n; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.n - n0), L = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t o = 0; o < s.o; ++o) {
      for (int64_t i = 0; i < nb; ++i)
        std::memcpy(grad + o * L + i * P, dy + ((n0 + i) * s.o + o) * P, sizeof(float) * static_cast<size_t>(P));
    }
    if (dw) {
      im2col(s, x + n0 * s.c * s.h * s.w, nb, cols);
      // dW (O, K) += dY (O, L) * cols (K, L)^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(s.o), static_cast<int>(K),
                  static_cast<int>(L), 1.0f, grad, static_cast<int>(L), cols, static_cast<int>(L), 1.0f, dw,
                  static_cast<int>(K));
    }
    if (dx) {
      // cols (K, L) = W (O, K)^T * dY (O, L), then scattered back into dx.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(K), static_cast<int>(L),
                  static_cast<int>(s.o), 1.0f, w, static_cast<int>(K), grad, static_cast<int>(L), 0.0f, cols,
                  static_cast<int>(L));
      col2im_add(s, cols, nb, dx + n0 * s.c * s.h * s.w);
    }
  }
}

}  // namespace kernels::cpu
