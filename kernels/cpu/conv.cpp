// CPU reference of kernels/conv.h: im2col + OpenBLAS sgemm.
//
// Two ways to batch the work, chosen per shape (use_per_image below):
//   per image  - images in parallel (OpenMP), each one im2col into thread-private columns and one
//                single-threaded GEMM y_n (O, P) = W (O, K) * cols_n (K, P) written straight into
//                y. No synchronisation inside, no copies; right when an image has enough output
//                pixels P for its GEMM to run well (8x8 and larger).
//   chunked    - the columns of `nb` images side by side, (K, nb*P), and one multi-threaded GEMM
//                per chunk. In the deep layers of a ResNet an image has few output pixels (4x4 at
//                32 px input), so a per-image GEMM would be a thin (O x C*9) * (C*9 x 16) product
//                that no BLAS runs fast; the chunk makes N wide. The price is a transposed copy
//                of the output (the GEMM gives (O, nb*P), y is (nb, O, P)).
// OpenBLAS (OpenMP build) runs single-threaded inside our parallel regions and uses both cores
// outside them, so its threads and ours never compete. Measured per layer in bench/RESULTS.md.
//
// Backward: the filter gradient is dW += dY * cols^T, the data gradient cols = W^T dY followed
// by col2im, which adds the columns back into dx. Columns are rebuilt from x in the backward
// rather than kept from the forward: they are KH*KW times the size of x, and rebuilding them
// costs one pass over memory. A 1x1 stride-1 unpadded convolution needs no columns at all.
#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/conv.h"

namespace kernels::cpu {
namespace {

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

// Row k = (c, u, v) of one image's columns: out[i*WO + j] = x[c, i*stride - pad + u,
// j*stride - pad + v], zero outside the image. Sequential; callers parallelise over rows or images.
void im2col_row(const Conv2dShape& s, const float* image, int64_t k, float* out) {
  const int64_t c = k / (s.kh * s.kw), u = (k / s.kw) % s.kh, v = k % s.kw;
  const float* plane = image + c * s.h * s.w;
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

// plane (H, W) of channel c += col2im of that channel's KH*KW rows of columns (row stride ld):
// the adjoint of im2col_row. Sequential; one caller thread owns each plane.
void col2im_plane(const Conv2dShape& s, const float* cols, int64_t ld, int64_t c, float* plane) {
  for (int64_t u = 0; u < s.kh; ++u) {
    for (int64_t v = 0; v < s.kw; ++v) {
      const float* in = cols + ((c * s.kh + u) * s.kw + v) * ld;
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

// cols (K, nb*P): row k, column i*P + p for image i of the chunk starting at x.
void im2col(const Conv2dShape& s, const float* x, int64_t nb, float* cols) {
  const int64_t K = rows_of(s), P = pixels_of(s), L = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < nb; ++i) im2col_row(s, x + i * s.c * s.h * s.w, k, cols + k * L + i * P);
}

// dx (the chunk's images) += col2im(cols), parallel over (image, channel) planes.
void col2im_add(const Conv2dShape& s, const float* cols, int64_t nb, float* dx) {
  const int64_t P = pixels_of(s), L = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t c = 0; c < s.c; ++c) col2im_plane(s, cols + i * P, L, c, dx + (i * s.c + c) * s.h * s.w);
}

// ---- images in parallel, one single-threaded GEMM each (images with many pixels) ----------
// Scratch per thread: one image's columns (K, P) and a private filter gradient (O, K), summed
// in thread order at the end so the result does not depend on timing. OpenBLAS (OpenMP build)
// runs single-threaded when called inside a parallel region, so the two pools never compete.

// Per thread: one image's columns (K, P); the backward adds a private filter gradient (O, K).
size_t per_thread_floats(const Conv2dShape& s, ConvPass pass) {
  return static_cast<size_t>(rows_of(s) * pixels_of(s) + (pass == ConvPass::Backward ? s.o * rows_of(s) : 0));
}

// A 1x1 stride-1 unpadded convolution's columns are the image itself: no im2col needed.
bool columns_are_input(const Conv2dShape& s) { return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0; }

// One image's columns (K, P): the image itself, or built into `cols`.
const float* image_columns(const Conv2dShape& s, const float* image, float* cols) {
  if (columns_are_input(s)) return image;
  for (int64_t k = 0; k < rows_of(s); ++k) im2col_row(s, image, k, cols + k * pixels_of(s));
  return cols;
}

void forward_per_image(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, float* ws) {
  const int K = static_cast<int>(rows_of(s)), P = static_cast<int>(pixels_of(s)), O = static_cast<int>(s.o);
#pragma omp parallel
  {
    float* scratch = ws + static_cast<size_t>(omp_get_thread_num()) * per_thread_floats(s, ConvPass::Forward);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.n; ++n) {
      const float* cols = image_columns(s, x + n * s.c * s.h * s.w, scratch);
      float* out = y + n * s.o * P;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, O, P, K, 1.0f, w, K, cols, P, 0.0f, out, P);
      if (b)
        for (int64_t o = 0; o < s.o; ++o)
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) out[o * P + p] += b[o];
    }
  }
}

void backward_per_image(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                        float* ws) {
  const int K = static_cast<int>(rows_of(s)), P = static_cast<int>(pixels_of(s)), O = static_cast<int>(s.o);
  int team = 1;  // threads that actually ran (fewer than the maximum under OMP_DYNAMIC)
#pragma omp parallel
  {
#pragma omp single
    team = omp_get_num_threads();
    float* scratch = ws + static_cast<size_t>(omp_get_thread_num()) * per_thread_floats(s, ConvPass::Backward);
    float* dw_own = scratch + K * P;
    if (dw) std::memset(dw_own, 0, sizeof(float) * static_cast<size_t>(O * K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.n; ++n) {
      const float* g = dy + n * s.o * P;
      float* dx_n = dx ? dx + n * s.c * s.h * s.w : nullptr;
      if (dw) {
        // dW (O, K) += dY_n (O, P) * cols_n (K, P)^T
        const float* cols = image_columns(s, x + n * s.c * s.h * s.w, scratch);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, O, K, P, 1.0f, g, P, cols, P, 1.0f, dw_own, K);
      }
      if (dx && columns_are_input(s)) {
        // dx_n (C, P) += W (O, C)^T * dY_n (O, P): the columns are dx itself.
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, O, 1.0f, w, K, g, P, 1.0f, dx_n, P);
      } else if (dx) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, O, 1.0f, w, K, g, P, 0.0f, scratch, P);
        for (int64_t c = 0; c < s.c; ++c) col2im_plane(s, scratch, P, c, dx_n + c * s.h * s.w);
      }
    }
  }
  if (!dw) return;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < O * K; ++i) {
    float total = 0;
    for (int t = 0; t < team; ++t) total += ws[static_cast<size_t>(t) * per_thread_floats(s, ConvPass::Backward) + K * P + i];
    dw[i] += total;
  }
}

// Which path a shape takes. Per image when an image has enough output pixels for a GEMM of
// its own to run well (P >= 64: 8x8 and up); the chunked path for the thin GEMMs of small
// feature maps. Measured per ResNet layer in bench/RESULTS.md.
bool use_per_image(const Conv2dShape& s) { return pixels_of(s) >= 64; }

}  // namespace

void conv2d_workspace_size(const Conv2dShape& s, ConvPass pass, size_t* bytes) {
  if (use_per_image(s)) {
    *bytes = static_cast<size_t>(omp_get_max_threads()) * per_thread_floats(s, pass) * sizeof(float);
    return;
  }
  // Chunked: the columns of a chunk and its output (forward) or its dY (backward), (O, nb*P).
  *bytes = static_cast<size_t>(chunk_images(s) * (rows_of(s) + s.o) * pixels_of(s)) * sizeof(float);
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    void* workspace, size_t /*workspace_bytes*/) {
  if (use_per_image(s)) return forward_per_image(s, x, w, b, y, static_cast<float*>(workspace));
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

void conv2d_bias_gradient(const Conv2dShape& s, const float* dy, float* db) {
  const int64_t P = pixels_of(s);
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

void conv2d_backward(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, bool accumulate_dx, void* workspace, size_t /*workspace_bytes*/) {
  const int64_t K = rows_of(s), P = pixels_of(s), nb_max = chunk_images(s);
  if (db) conv2d_bias_gradient(s, dy, db);
  if (dx && !accumulate_dx) {  // col2im adds into dx: start it at zero
    const int64_t numel = s.n * s.c * s.h * s.w;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < numel; ++i) dx[i] = 0.0f;
  }
  if (!dx && !dw) return;
  if (use_per_image(s)) return backward_per_image(s, x, w, dy, dx, dw, static_cast<float*>(workspace));
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
