// CPU reference of kernels/contrastive.h: OpenMP over rows, dot products and row sums in double.
#include "kernels/contrastive.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/common/softmax.h"

namespace kernels::cpu {

namespace {

double dot(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
  return s;
}

}  // namespace

void infonce_forward(const float* q, const float* k, const float* queue, float* logits, float* row_loss, float* lse,
                     float* correct, int64_t n, int64_t kq, int64_t d, float inv_temp) {
  const int64_t width = kq + 1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* qi = q + i * d;
    float* x = logits + i * width;
    x[0] = static_cast<float>(dot(qi, k + i * d, d) * inv_temp);
    for (int64_t j = 0; j < kq; ++j) x[j + 1] = static_cast<float>(dot(qi, queue + j * d, d) * inv_temp);
    float m = x[0];
    for (int64_t j = 1; j < width; ++j) m = std::fmax(m, x[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < width; ++j) sum += std::exp(static_cast<double>(x[j] - m));
    lse[i] = logsumexp(m, static_cast<float>(sum));
    row_loss[i] = lse[i] - x[0];
    correct[i] = x[0] >= m ? 1.0f : 0.0f;  // the first maximum is index 0 exactly when x_0 is a maximum
  }
}

void infonce_backward(const float* k, const float* queue, const float* logits, const float* lse, const float* dloss,
                      float scale, float* dlogits, float* dq, int64_t n, int64_t kq, int64_t d, float inv_temp) {
  const int64_t width = kq + 1;
  const float s = scale * dloss[0];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* x = logits + i * width;
    float* dx = dlogits + i * width;
    for (int64_t j = 0; j < width; ++j) dx[j] = s * cross_entropy_grad(x[j], lse[i], j == 0 ? 1.0f : 0.0f, 1.0f);
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    const float* ki = k + i * d;
    for (int64_t c = 0; c < d; ++c) acc[static_cast<size_t>(c)] = static_cast<double>(dx[0]) * ki[c];
    for (int64_t j = 0; j < kq; ++j) {
      const double w = dx[j + 1];
      const float* key = queue + j * d;
      for (int64_t c = 0; c < d; ++c) acc[static_cast<size_t>(c)] += w * key[c];
    }
    for (int64_t c = 0; c < d; ++c) dq[i * d + c] += static_cast<float>(acc[static_cast<size_t>(c)] * inv_temp);
  }
}

void queue_enqueue(float* queue, const float* keys, int64_t kq, int64_t n, int64_t d, int32_t* ptr,
                   const int32_t* skip) {
  if (skip && *skip) return;  // a skipped step: rows and position as they were
  const int64_t at = *ptr;
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(queue + ((at + i) % kq) * d, keys + i * d, static_cast<size_t>(d) * sizeof(float));
  *ptr = static_cast<int32_t>((at + n) % kq);
}

}  // namespace kernels::cpu
