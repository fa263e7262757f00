// Division by a divisor fixed at launch, without a division instruction sequence per element:
// the host precomputes a magic multiplier (Granlund and Montgomery, "Division by invariant
// integers using multiplication", PLDI 1994), and the device divides with one 32x32 high
// multiply, an add and a shift. A 32-bit `/` by a runtime value is a ~15-instruction sequence
// (float reciprocal and corrections) and a 64-bit one a call to a ~70-instruction subroutine.
// Domain: numerators and divisors in [0, 2^31) (divisor >= 1), where (hi + n) cannot
// overflow 32 bits; the launchers check their shapes against it (kernels/cuda/runtime.h,
// plane_launch). Plain C++ on the host, so tests/cuda_review_test.cpp checks it against / and %
// on every machine.
#pragma once

#include <cstdint>

#include "kernels/common/hd.h"

namespace kernels::cuda {

constexpr int64_t kMaxIndex32 = (int64_t{1} << 31) - 1;  // largest numerator and divisor

struct FastDivmod {
  uint32_t divisor = 1;
  uint32_t multiplier = 1;
  uint32_t shift = 0;

  FastDivmod() = default;
  // d in [1, 2^31). shift = ceil(log2 d), multiplier = floor(2^32 (2^shift - d) / d) + 1.
  explicit FastDivmod(int64_t d) : divisor(static_cast<uint32_t>(d)) {
    while ((int64_t{1} << shift) < d) ++shift;
    multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1);
  }

  TS_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
  // q = n / divisor, r = n % divisor.
  TS_HD uint32_t divmod(uint32_t n, uint32_t* r) const {
    const uint32_t q = div(n);
    *r = n - q * divisor;
    return q;
  }
};

}  // namespace kernels::cuda
