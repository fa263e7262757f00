// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// written once for both backends and bit-identical to cuRAND's device generator
// curandStatePhilox4_32_10_t:
//
//   curand_init(seed, subsequence, offset, &s); curand(&s) / curand_uniform(&s) / curand4(&s)
//
// gives the same numbers as
//
//   PhiloxState s(seed, subsequence, offset); s.next_u32() / s.uniform() / s.next4()
//
// The state is a 128-bit counter (x, y = position in the subsequence / 4; z, w =
// subsequence) and a 64-bit key (the seed). Every draw in the project is a pure function of
// (seed, stream, step, index): `philox_uniform(seed, stream, step, index)` places
// (stream, step) in the subsequence and index in the offset. Tested against the Random123
// known-answer vectors on the CPU (tests/philox_test.cpp) and against cuRAND on a GPU.
// Cost: 10 rounds of two 32x32->64 multiplies per four 32-bit outputs (one block).
#pragma once

#include <cstdint>

#include "kernels/common/hd.h"

namespace kernels {

// What a draw is for. Each purpose has its own subsequence range, so changing how many
// numbers one purpose consumes never shifts another's.
enum RngStream : uint32_t {
  kStreamInit = 1,       // parameter initialisation
  kStreamAugment = 2,    // per-image augmentation parameters
  kStreamTeacher = 3,    // STS / SE fragment masks
  kStreamSampler = 4,    // epoch shuffles, labeled-subset choice
  kStreamKeyShuffle = 5, // MoCo's shuffle BN: the permutation of the global key batch
  kStreamTest = 15,      // tests and benchmarks
};

struct Philox4 {
  uint32_t x, y, z, w;
};

// The 64-bit product's two halves. On the device as __umulhi and a 32-bit multiply, as cuRAND
// writes it (nvcc pairs them into one IMAD.WIDE.U32): the 64-bit product form compiles to the
// same wide multiply plus moves and adds, 115 instead of 83 instructions for one draw on sm_90
// (bench/philox_draw_cost.cu).
TS_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
#endif
}

// The bijection: ten rounds of the Philox S-box with a Weyl-sequence key schedule.
TS_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t key_lo, uint32_t key_hi) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(kM0, ctr.x, &hi0);
    const uint32_t lo1 = philox_mulhilo(kM1, ctr.z, &hi1);
    ctr = Philox4{hi1 ^ ctr.y ^ key_lo, lo1, hi0 ^ ctr.w ^ key_hi, lo0};
    key_lo += kW0;
    key_hi += kW1;
  }
  return ctr;
}

// The 32-bit integer -> (0, 1] float map of curand_uniform: x * 2^-32 + 2^-33.
TS_HD float philox_to_uniform(uint32_t x) {
  constexpr float kInv = 2.3283064e-10f;  // 2^-32, CURAND_2POW32_INV
  return static_cast<float>(x) * kInv + (kInv / 2.0f);
}

// A sequential stream with cuRAND's state layout and semantics.
struct PhiloxState {
  Philox4 ctr;
  Philox4 output;
  uint32_t key_lo, key_hi;
  uint32_t pos;  // which word of `output` is next (cuRAND's STATE)

  TS_HD PhiloxState(uint64_t seed, uint64_t subsequence, uint64_t offset) {
    ctr = Philox4{0, 0, 0, 0};
    key_lo = static_cast<uint32_t>(seed);
    key_hi = static_cast<uint32_t>(seed >> 32);
    pos = 0;
    add_hi(subsequence);
    pos += static_cast<uint32_t>(offset & 3);
    uint64_t blocks = offset / 4;
    if (pos > 3) {
      blocks += 1;
      pos -= 4;
    }
    add_lo(blocks);
    output = philox4x32_10(ctr, key_lo, key_hi);
  }

  TS_HD uint32_t next_u32() {
    const uint32_t words[4] = {output.x, output.y, output.z, output.w};
    const uint32_t r = words[pos++];
    if (pos == 4) {
      add_lo(1);
      output = philox4x32_10(ctr, key_lo, key_hi);
      pos = 0;
    }
    return r;
  }

  // curand4: the next four words, consuming one whole block.
  TS_HD Philox4 next4() {
    const Philox4 old = output;
    add_lo(1);
    output = philox4x32_10(ctr, key_lo, key_hi);
    const uint32_t w[8] = {old.x, old.y, old.z, old.w, output.x, output.y, output.z, output.w};
    return Philox4{w[pos], w[pos + 1], w[pos + 2], w[pos + 3]};
  }

  TS_HD float uniform() { return philox_to_uniform(next_u32()); }

 private:
  // 128-bit counter arithmetic, exactly as cuRAND's Philox_State_Incr / _Incr_hi.
  TS_HD void add_lo(uint64_t n) {
    const uint32_t nlo = static_cast<uint32_t>(n);
    uint32_t nhi = static_cast<uint32_t>(n >> 32);
    ctr.x += nlo;
    if (ctr.x < nlo) nhi++;
    ctr.y += nhi;
    if (nhi <= ctr.y) return;
    if (++ctr.z) return;
    ++ctr.w;
  }
  TS_HD void add_hi(uint64_t n) {
    const uint32_t nlo = static_cast<uint32_t>(n);
    uint32_t nhi = static_cast<uint32_t>(n >> 32);
    ctr.z += nlo;
    if (ctr.z < nlo) nhi++;
    ctr.w += nhi;
  }
};

// The subsequence that holds the draws of one purpose at one step (or epoch).
TS_HD uint64_t philox_subsequence(uint32_t stream, uint64_t step) {
  return (static_cast<uint64_t>(stream) << 48) | (step & ((uint64_t{1} << 48) - 1));
}

// One uniform draw in (0, 1], a pure function of its four coordinates.
// On a GPU this equals curand_init(seed, philox_subsequence(stream, step), index, &s);
// curand_uniform(&s).
TS_HD float philox_uniform(uint64_t seed, uint32_t stream, uint64_t step, uint64_t index) {
  PhiloxState s(seed, philox_subsequence(stream, step), index);
  return s.uniform();
}

// The same draws without a state, one Philox block per four consecutive indices. The state
// above costs two blocks whenever it is used once: its constructor computes the block under
// the offset, and the draw that takes the block's last word (or curand4, always) computes the
// next one, as cuRAND's does. Positioned at index i, the state's counter is (i / 4 in the low
// 64 bits, subsequence in the high 64) and the draw is word i % 4 of that counter's block, so
//   philox_uniform(seed, stream, step, i)
//     == philox_to_uniform(philox_word(philox_block(seed, philox_subsequence(stream, step), i / 4), i % 4))
// (tests/philox_test.cpp checks this for many i, subsequences and seeds).
TS_HD Philox4 philox_block(uint64_t seed, uint64_t subsequence, uint64_t block) {
  const Philox4 ctr{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                    static_cast<uint32_t>(subsequence), static_cast<uint32_t>(subsequence >> 32)};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

TS_HD uint32_t philox_word(const Philox4& b, uint32_t i) {
  return i == 0 ? b.x : i == 1 ? b.y : i == 2 ? b.z : b.w;
}

// philox_uniform(seed, stream, step, index) for a caller that has the subsequence: one block.
TS_HD float philox_uniform_at(uint64_t seed, uint64_t subsequence, uint64_t index) {
  return philox_to_uniform(philox_word(philox_block(seed, subsequence, index >> 2), static_cast<uint32_t>(index & 3)));
}

}  // namespace kernels
