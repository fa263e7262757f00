// Philox4x32-10: Random123 known-answer vectors, cuRAND-compatible stream semantics, and
// (on a GPU) bit-identity with cuRAND's device generator.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/common/philox.h"
#include "tests/op_case.h"

using kernels::Philox4;
using kernels::PhiloxState;

// Known-answer vectors from Random123's kat_vectors (philox4x32 10 rounds).
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    Philox4 ctr;
    uint32_t key_lo, key_hi;
    Philox4 expect;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, 0, 0, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffu, 0xffffffffu,
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, 0xa4093822u, 0x299f31d0u,
       {0xd16cfe09u, 0x94fdcceb, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const Philox4 r = kernels::philox4x32_10(k.ctr, k.key_lo, k.key_hi);
    EXPECT_EQ(r.x, k.expect.x);
    EXPECT_EQ(r.y, k.expect.y);
    EXPECT_EQ(r.z, k.expect.z);
    EXPECT_EQ(r.w, k.expect.w);
  }
}

// The state follows cuRAND's layout: seed -> key, subsequence -> counter high half,
// offset -> counter low half (in blocks of 4) plus a word position.
TEST(Philox, StateMatchesCounterArithmetic) {
  const uint64_t seed = 0x0123456789abcdefull;
  PhiloxState s(seed, /*subsequence=*/5, /*offset=*/0);
  const Philox4 block0 = kernels::philox4x32_10(Philox4{0, 0, 5, 0}, 0x89abcdefu, 0x01234567u);
  const Philox4 block1 = kernels::philox4x32_10(Philox4{1, 0, 5, 0}, 0x89abcdefu, 0x01234567u);
  EXPECT_EQ(s.next_u32(), block0.x);
  EXPECT_EQ(s.next_u32(), block0.y);
  EXPECT_EQ(s.next_u32(), block0.z);
  EXPECT_EQ(s.next_u32(), block0.w);
  EXPECT_EQ(s.next_u32(), block1.x);
  // An offset lands on the same word as drawing that many numbers.
  PhiloxState a(seed, 7, 0), b(seed, 7, 6);
  for (int i = 0; i < 6; ++i) a.next_u32();
  for (int i = 0; i < 9; ++i) EXPECT_EQ(a.next_u32(), b.next_u32());
  // curand4 semantics: the next four words from the current position.
  PhiloxState c(seed, 7, 2), d(seed, 7, 2);
  const Philox4 four = c.next4();
  EXPECT_EQ(four.x, d.next_u32());
  EXPECT_EQ(four.y, d.next_u32());
  EXPECT_EQ(four.z, d.next_u32());
  EXPECT_EQ(four.w, d.next_u32());
}

TEST(Philox, UniformRangeAndMean) {
  PhiloxState s(42, 0, 0);
  double sum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const float u = s.uniform();
    ASSERT_GT(u, 0.0f);
    ASSERT_LE(u, 1.0f);
    sum += u;
  }
  // Mean of U(0,1) has standard deviation sqrt(1/12/n) ~ 6.5e-4: 5 sigma.
  EXPECT_NEAR(sum / n, 0.5, 5 * 6.5e-4);
  EXPECT_EQ(kernels::philox_to_uniform(0), 1.1641532e-10f);  // 2^-33: never exactly 0
}

// The stateless formulation the CUDA teacher kernel draws with (one Philox block per four
// indices) gives exactly philox_uniform's draws: indices on every word position (not only
// multiples of 4, as channel and tensor fragment ids are), around the 2^32 block boundary where
// the counter's low word carries, large steps, and seeds with both key words set.
TEST(Philox, OneBlockPerFourIndicesEqualsTheState) {
  const uint64_t seeds[] = {0, 42, 0xdeadbeefcafef00dull};
  const uint64_t steps[] = {0, 1, 977, (uint64_t{1} << 48) - 1};
  std::vector<uint64_t> indices;
  for (uint64_t i = 0; i < 4100; ++i) indices.push_back(i);
  for (uint64_t b : {uint64_t{0xffffffffu}, uint64_t{0x100000000ull}, uint64_t{0x3ffffffffffull}})
    for (uint64_t j = 0; j < 8; ++j) indices.push_back(4 * b - 4 + j);
  kernels::PhiloxState pick(7, 0, 0);
  for (int i = 0; i < 2000; ++i) indices.push_back((uint64_t{pick.next_u32()} << 32 | pick.next_u32()) >> 2);
  int64_t compared = 0;
  for (uint64_t seed : seeds)
    for (uint64_t step : steps) {
      const uint64_t sub = kernels::philox_subsequence(kernels::kStreamTeacher, step);
      for (uint64_t f : indices) {
        const float want = kernels::philox_uniform(seed, kernels::kStreamTeacher, step, f);
        ASSERT_EQ(kernels::philox_uniform_at(seed, sub, f), want) << "seed " << seed << " step " << step << " f " << f;
        // The element path: block g / 4 of a group start g holds the draws of g .. g + 3.
        const Philox4 block = kernels::philox_block(seed, sub, f >> 2);
        ASSERT_EQ(kernels::philox_to_uniform(kernels::philox_word(block, static_cast<uint32_t>(f & 3))), want) << f;
        ++compared;
      }
    }
  EXPECT_EQ(compared, 3 * 4 * (4100 + 24 + 2000));
  // A draw that differs from its neighbours: the test above would notice a shifted word.
  EXPECT_NE(kernels::philox_uniform_at(1, 0, 1), kernels::philox_uniform_at(1, 0, 2));
}

// Declared in tests/philox_cuda_test.cu; draws with cuRAND on the device.
#if TESSERA_CUDA
void curand_reference(uint64_t seed, uint64_t subsequence, uint64_t offset, int n, uint32_t* words,
                      float* uniforms, uint32_t* four);
void device_draws_at(uint64_t seed, uint64_t subsequence, const uint64_t* index, int n, float* ours,
                     float* theirs);
#endif

// On the device: the teacher kernel's one-block draw equals cuRAND's draw at the same
// coordinates, and both equal the host's philox_uniform.
TEST(Philox, DeviceOneBlockDrawEqualsCurand) {
#if TESSERA_CUDA
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "device draws not compared: " << reason;
  std::vector<uint64_t> index;
  for (uint64_t i = 0; i < 1031; ++i) index.push_back(i);
  for (uint64_t j = 0; j < 8; ++j) index.push_back(4 * uint64_t{0xffffffffu} - 4 + j);
  const int n = static_cast<int>(index.size());
  for (uint64_t step : {uint64_t{0}, uint64_t{123456}}) {
    const uint64_t sub = kernels::philox_subsequence(kernels::kStreamTeacher, step);
    std::vector<float> ours(index.size()), theirs(index.size());
    device_draws_at(42, sub, index.data(), n, ours.data(), theirs.data());
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(ours[i], theirs[i]) << "index " << index[i] << " step " << step;
      ASSERT_EQ(ours[i], kernels::philox_uniform(42, kernels::kStreamTeacher, step, index[i])) << index[i];
    }
  }
#else
  GTEST_SKIP() << "device draws not compared: built without CUDA";
#endif
}

TEST(Philox, BitIdenticalToCurand) {
#if TESSERA_CUDA
  std::string reason;
  if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "cuRAND comparison not run: " << reason;
  const uint64_t seeds[] = {0, 42, 0xdeadbeefcafef00dull};
  const uint64_t subs[] = {0, 3, kernels::philox_subsequence(kernels::kStreamTeacher, 123456)};
  const uint64_t offsets[] = {0, 1, 3, 4, 1001};
  for (uint64_t seed : seeds)
    for (uint64_t sub : subs)
      for (uint64_t off : offsets) {
        uint32_t words[9], four[4];
        float uniforms[9];
        curand_reference(seed, sub, off, 9, words, uniforms, four);
        PhiloxState a(seed, sub, off), b(seed, sub, off), c(seed, sub, off);
        for (int i = 0; i < 9; ++i) {
          EXPECT_EQ(a.next_u32(), words[i]) << "seed " << seed << " sub " << sub << " off " << off;
          EXPECT_EQ(b.uniform(), uniforms[i]);
        }
        const Philox4 f = c.next4();
        EXPECT_EQ(f.x, four[0]);
        EXPECT_EQ(f.y, four[1]);
        EXPECT_EQ(f.z, four[2]);
        EXPECT_EQ(f.w, four[3]);
      }
#else
  GTEST_SKIP() << "cuRAND comparison not run: built without CUDA";
#endif
}
