// How the CPU fast tier's kernels are compared with the reference's (tests/conv_fast_test.cpp,
// tests/linear_fast_test.cpp): the same float32 sums in another order agree to rounding, about
// sqrt(L) u of the result for a sum of L terms of random sign (u = 2^-24); the tests allow
// 4 sqrt(L) u in relative 2-norm over the whole tensor (conv_fast_test.cpp's header says why).
// A wrong index, a missing term or a lost accumulation is off by order 1 / sqrt(L) or more.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace tessera::testing {

// ||(a - base) - (b - base)|| / ||b - base||: the error of what was computed (or added into
// `base`, when given).
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>* base = nullptr) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double r = static_cast<double>(b[i]) - (base ? (*base)[i] : 0.0);
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += r * r;
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

// 4 sqrt(L) u for a sum of L terms.
inline double sum_tolerance(double terms) { return 4.0 * std::sqrt(terms) * std::ldexp(1.0, -24); }

}  // namespace tessera::testing
