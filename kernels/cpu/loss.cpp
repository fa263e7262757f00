// CPU reference of kernels/loss.h: OpenMP over rows, row sums in double.
#include "kernels/loss.h"

#include <cmath>

#include "kernels/common/l2norm.h"
#include "kernels/common/softmax.h"

namespace kernels::cpu {

namespace {

// The three row sums the BYOL loss needs: ||p||, ||z||, <p, z>.
struct CosineParts {
  float p_norm, z_norm, dot;
};

CosineParts cosine_parts(const float* p, const float* z, int64_t d) {
  double pp = 0.0, zz = 0.0, pz = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    pp += static_cast<double>(p[j]) * p[j];
    zz += static_cast<double>(z[j]) * z[j];
    pz += static_cast<double>(p[j]) * z[j];
  }
  return {static_cast<float>(std::sqrt(pp)), static_cast<float>(std::sqrt(zz)), static_cast<float>(pz)};
}

float row_logsumexp(const float* x, int64_t k) {
  float m = x[0];
  for (int64_t j = 1; j < k; ++j) m = std::fmax(m, x[j]);
  double sum = 0.0;
  for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(x[j] - m));
  return logsumexp(m, static_cast<float>(sum));
}

}  // namespace

void byol_loss_forward(const float* p, const float* z, float* row_loss, int64_t n, int64_t d, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const CosineParts c = cosine_parts(p + i * d, z + i * d, d);
    const float cos = c.dot / (l2_denominator(c.p_norm, eps) * l2_denominator(c.z_norm, eps));
    row_loss[i] = 2.0f - 2.0f * cos;
  }
}

void byol_loss_backward(const float* p, const float* z, const float* dloss, float scale, float* dp, float* dz,
                        int64_t n, int64_t d, float eps) {
  // loss_i = 2 - 2 <pn, zn>: the gradient reaching pn is -2 g zn, and l2_normalize_grad
  // carries it through the normalisation (its dot term is <pn, -2 g zn> = -2 g cos).
  const float g = -2.0f * scale * dloss[0];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float *pi = p + i * d, *zi = z + i * d;
    const CosineParts c = cosine_parts(pi, zi, d);
    const float p_den = l2_denominator(c.p_norm, eps), z_den = l2_denominator(c.z_norm, eps);
    const float cos = c.dot / (p_den * z_den);
    for (int64_t j = 0; j < d; ++j) {
      const float pn = pi[j] / p_den, zn = zi[j] / z_den;
      if (dp) dp[i * d + j] += l2_normalize_grad(pn, g * zn, g * cos, c.p_norm, eps);
      if (dz) dz[i * d + j] += l2_normalize_grad(zn, g * pn, g * cos, c.z_norm, eps);
    }
  }
}

void cross_entropy_forward(const float* logits, const int32_t* labels, const float* weight, float* row_loss,
                           float* lse, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* x = logits + i * k;
    lse[i] = row_logsumexp(x, k);
    const int32_t label = labels[i];
    const float w = weight ? weight[i] : 1.0f;
    row_loss[i] = label >= 0 && label < k ? w * (lse[i] - x[label]) : NAN;
  }
}

void cross_entropy_backward(const float* logits, const int32_t* labels, const float* weight, const float* lse,
                            const float* dloss, float scale, float* dlogits, int64_t n, int64_t k) {
  const float g = scale * dloss[0];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gw = g * (weight ? weight[i] : 1.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float t = j == labels[i] ? 1.0f : 0.0f;
      dlogits[i * k + j] += gw * cross_entropy_grad(logits[i * k + j], lse[i], t, 1.0f);
    }
  }
}

void cross_entropy_soft_forward(const float* logits, const float* targets, float* row_loss, float* lse, int64_t n,
                                int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float *x = logits + i * k, *t = targets + i * k;
    lse[i] = row_logsumexp(x, k);
    double loss = 0.0;
    for (int64_t j = 0; j < k; ++j) loss += static_cast<double>(t[j]) * (lse[i] - x[j]);
    row_loss[i] = static_cast<float>(loss);
  }
}

void cross_entropy_soft_backward(const float* logits, const float* targets, const float* lse, const float* dloss,
                                 float scale, float* dlogits, int64_t n, int64_t k) {
  const float g = scale * dloss[0];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* t = targets + i * k;
    double t_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) t_sum += t[j];
    for (int64_t j = 0; j < k; ++j)
      dlogits[i * k + j] += g * cross_entropy_grad(logits[i * k + j], lse[i], t[j], static_cast<float>(t_sum));
  }
}

void argmax_max_prob(const float* logits, int32_t* argmax, float* max_prob, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* x = logits + i * k;
    int64_t best = 0;
    for (int64_t j = 1; j < k; ++j)
      if (x[j] > x[best]) best = j;
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(x[j] - x[best]));
    argmax[i] = static_cast<int32_t>(best);
    max_prob[i] = static_cast<float>(1.0 / sum);
  }
}

}  // namespace kernels::cpu
