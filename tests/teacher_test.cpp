// TeacherSmoother and the fused teacher_update kernel (kernels/teacher_update.h).
//
// Invariant tests in the style of Caffe's dropout test: after an update every teacher element
// equals, bit for bit, either its old value or m * old + (1 - m) * student; all elements of a
// fragment share the decision, and the decision is the one Philox gives for the fragment id
// that the ParamTable defines (computed here independently of the kernel's own helpers); the
// update rate sits inside a 99.9% confidence bound of 1 - p; canaries in the gaps survive.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/teacher.h"
#include "kernels/common/philox.h"
#include "kernels/common/sts_rule.h"
#include "models/model.h"
#include "tests/op_case.h"
#include "tests/teacher_replay.h"

namespace tessera {
namespace {

// A small network's table with the awkward cases: rows of 27 and 3 elements, slots whose size
// is not a multiple of 4, 1-D slots that share channel fragments, a linear head.
ParamTable test_table() {
  ParamTable t;
  t.add("conv1.weight", Shape{8, 3, 3, 3}, ParamKind::ConvWeight);
  t.add("bn1.weight", Shape{8}, ParamKind::BnWeight);
  t.add("bn1.bias", Shape{8}, ParamKind::BnBias);
  t.add("conv2.weight", Shape{5, 8, 1, 1}, ParamKind::ConvWeight);
  t.add("conv2.bias", Shape{5}, ParamKind::Bias);
  t.add("conv3.weight", Shape{7, 5, 3, 3}, ParamKind::ConvWeight);
  t.add("bn3.weight", Shape{7}, ParamKind::BnWeight);
  t.add("bn3.bias", Shape{7}, ParamKind::BnBias);
  t.add("fc.weight", Shape{10, 7}, ParamKind::LinearWeight);
  t.add("fc.bias", Shape{10}, ParamKind::Bias);
  t.add("big.weight", Shape{3, 3000}, ParamKind::LinearWeight);  // crosses chunk boundaries
  return t;
}

ParamTable buffer_table() {
  ParamTable t;
  t.add("bn1.running_mean", Shape{8}, ParamKind::BnRunningMean);
  t.add("bn1.running_var", Shape{8}, ParamKind::BnRunningVar);
  t.add("bn3.running_mean", Shape{7}, ParamKind::BnRunningMean);
  return t;
}

// Fills every slot of an arena with uniform values in (-1, 1) from the test stream.
void fill_random(Arena& a, uint64_t seed) {
  std::vector<float> host = to_host_f32(a.all());
  for (const Slot& s : a.table().slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i)
      host[static_cast<size_t>(i)] = 2.0f * kernels::philox_uniform(seed, kernels::kStreamTest, 0, static_cast<uint64_t>(i)) - 1.0f;
  from_host(a.all(), host);
}

std::vector<float> host_of(const Arena& a) { return to_host_f32(a.all()); }

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// The fragment of element e of slot `k`, straight from the table's definition.
uint64_t fragment_from_table(const ParamTable& t, size_t k, int64_t e, Granularity g) {
  const Slot& s = t[k];
  if (g == Granularity::Tensor) return k;
  if (g == Granularity::Channel) return static_cast<uint64_t>(s.channel_fragment_base + e / (s.numel / s.channels));
  return static_cast<uint64_t>(s.offset + e);
}

float blend(float old, float student, float m) { return m == 0.0f ? student : std::fmaf(m, old, (1.0f - m) * student); }

struct World {
  ParamTable params = test_table(), buffers = buffer_table();
  Device device;
  Arena student, teacher, student_buf, teacher_buf;
  explicit World(Device d = Device::CPU)
      : device(d), student(params, d), teacher(params, d), student_buf(buffers, d), teacher_buf(buffers, d) {
    fill_random(student, 1);
    fill_random(teacher, 2);
    fill_random(student_buf, 3);
    fill_random(teacher_buf, 4);
    for (Arena* a : {&student, &teacher, &student_buf, &teacher_buf}) a->write_canaries();
  }
  void new_student(uint64_t seed) {
    fill_random(student, seed);
    student.write_canaries();
  }
  void expect_canaries_intact() const {
    for (const Arena* a : {&student, &teacher, &student_buf, &teacher_buf})
      EXPECT_TRUE(a->broken_canaries().empty()) << "a kernel wrote into a gap: " << a->broken_canaries()[0];
  }
};

TeacherConfig sts_config(Granularity g, float p = 0.7f) {
  TeacherConfig c;
  c.mode = SmoothingMode::Sts;
  c.granularity = g;
  c.preserve_prob = p;
  c.momentum = 0.9f;
  c.schedule = MomentumSchedule::Constant;
  c.seed = 42;
  return c;
}

class TeacherInvariants : public ::testing::TestWithParam<Granularity> {};

// Every element: exactly old or exactly the blend; the observed decision is shared by the
// whole fragment and equals Philox's decision for the fragment id the table defines.
TEST_P(TeacherInvariants, EachElementIsOldOrBlendAndFragmentsShareTheDecision) {
  const Granularity g = GetParam();
  World w;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(g));
  int64_t kept = 0, updated = 0;
  for (int64_t step = 0; step < 12; ++step) {
    w.new_student(100 + static_cast<uint64_t>(step));
    const std::vector<float> old = host_of(w.teacher), student = host_of(w.student);
    sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, step);
    const std::vector<float> now = host_of(w.teacher);
    std::map<uint64_t, int> decision;  // fragment -> 0 kept, 1 updated
    for (size_t k = 0; k < w.params.size(); ++k) {
      const Slot& s = w.params[k];
      for (int64_t e = 0; e < s.numel; ++e) {
        const size_t i = static_cast<size_t>(s.offset + e);
        const float b = blend(old[i], student[i], 0.9f);
        ASSERT_FALSE(same_bits(old[i], b)) << "test data must tell the two values apart";
        const bool is_old = same_bits(now[i], old[i]), is_blend = same_bits(now[i], b);
        ASSERT_TRUE(is_old || is_blend) << s.name << "[" << e << "] = " << now[i] << " is neither the old value "
                                        << old[i] << " nor the blend " << b << " at step " << step;
        const uint64_t f = fragment_from_table(w.params, k, e, g);
        auto [it, first] = decision.emplace(f, is_blend ? 1 : 0);
        ASSERT_EQ(it->second, is_blend ? 1 : 0) << s.name << "[" << e << "]: fragment " << f << " split at step " << step;
        if (first) {
          const float u = kernels::philox_uniform(42, kernels::kStreamTeacher, static_cast<uint64_t>(step), f);
          ASSERT_EQ(is_blend, u >= 0.7f) << "fragment " << f << " drew " << u << " at step " << step;
          (is_blend ? updated : kept) += 1;
        }
      }
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(updated, 0);
  w.expect_canaries_intact();
}

INSTANTIATE_TEST_SUITE_P(Granularities, TeacherInvariants,
                         ::testing::Values(Granularity::Tensor, Granularity::Channel, Granularity::Element),
                         [](const auto& info) { return std::string(granularity_name(info.param)); });

// Channel c of a conv, its bias and the BatchNorm after it go together.
// The draw can be exactly 1.0f: float(x) rounds the top 128 words up to 2^32. preserve_prob 1
// must keep the teacher even then (`u < p` alone updated it once in 2^25 draws); p = 0 never
// keeps, since no draw is 0.
TEST(Teacher, PreserveProbOneKeepsEvenADrawOfOne) {
  EXPECT_EQ(kernels::philox_to_uniform(0xFFFFFFFFu), 1.0f);
  EXPECT_LT(kernels::philox_to_uniform(0xFFFFFF7Fu), 1.0f);
  EXPECT_TRUE(kernels::sts_keep(kernels::philox_to_uniform(0xFFFFFFFFu), 1.0f));
  EXPECT_GT(kernels::philox_to_uniform(0u), 0.0f);
  EXPECT_FALSE(kernels::sts_keep(kernels::philox_to_uniform(0u), 0.0f));
  EXPECT_FALSE(kernels::sts_keep(kernels::philox_to_uniform(0xFFFFFFFFu), 0.999f));
}

TEST(Teacher, ChannelFragmentsFollowTheLayer) {
  World w;
  const ParamTable& t = w.params;
  EXPECT_EQ(t[1].channel_fragment_base, t[0].channel_fragment_base);  // bn1 with conv1
  EXPECT_EQ(t[4].channel_fragment_base, t[3].channel_fragment_base);  // conv2.bias with conv2
  EXPECT_EQ(t[6].channel_fragment_base, t[5].channel_fragment_base);  // bn3 with conv3
  EXPECT_EQ(t[9].channel_fragment_base, t[8].channel_fragment_base);  // fc.bias with fc
  const std::vector<kernels::TeacherSlot> rows = teacher_slots(t);
  EXPECT_EQ(rows[0].row_numel, 27);
  EXPECT_EQ(rows[3].row_numel, 8);
  EXPECT_EQ(rows[1].row_numel, 1);
  // The kernel's own fragment helper agrees with the table at every element.
  for (size_t k = 0; k < t.size(); ++k)
    for (int64_t e = 0; e < t[k].numel; ++e)
      for (Granularity g : {Granularity::Tensor, Granularity::Channel, Granularity::Element})
        ASSERT_EQ(kernels::teacher_fragment(rows[k], g, t[k].offset + e), fragment_from_table(t, k, e, g));
}

// The updated fraction over many steps is inside the 99.9% bound of 1 - p, and the host-side
// statistics are exactly what the kernel did.
TEST(Teacher, UpdateRateMatchesPreserveProbAndStatsMatchKernel) {
  for (Granularity g : {Granularity::Tensor, Granularity::Channel}) {
    World w;
    const float p = 0.7f;
    TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(g, p));
    int64_t trials = 0, updates = 0;
    for (int64_t step = 0; step < 300; ++step) {
      const std::vector<float> old = host_of(w.teacher);
      sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, step);
      const std::vector<float> now = host_of(w.teacher);
      // Parameters updated, observed; fragments updated, from one element per fragment.
      int64_t params_changed = 0;
      const size_t num_fragments =
          g == Granularity::Tensor ? w.params.size() : static_cast<size_t>(w.params.channel_fragments());
      std::vector<char> frag(num_fragments, -1);  // -1: no element seen
      for (size_t k = 0; k < w.params.size(); ++k)
        for (int64_t e = 0; e < w.params[k].numel; ++e) {
          const size_t i = static_cast<size_t>(w.params[k].offset + e);
          const bool changed = !same_bits(old[i], now[i]);
          params_changed += changed;
          frag[fragment_from_table(w.params, k, e, g)] = changed;
        }
      int64_t frags_changed = 0;
      for (char changed : frag) {
        ASSERT_NE(changed, -1) << "a fragment id without elements";
        frags_changed += changed;
      }
      const TeacherStats st = sm.stats_at(step);
      ASSERT_EQ(st.fragments, static_cast<int64_t>(num_fragments));
      ASSERT_DOUBLE_EQ(st.fragments_updated, static_cast<double>(frags_changed) / static_cast<double>(num_fragments));
      ASSERT_DOUBLE_EQ(st.params_updated, static_cast<double>(params_changed) / static_cast<double>(w.params.total_numel()));
      trials += static_cast<int64_t>(num_fragments);
      updates += frags_changed;
      w.new_student(1000 + static_cast<uint64_t>(step));  // so that an update always changes the value
    }
    // Binomial: |rate - (1 - p)| <= z * sqrt(p (1 - p) / n), z = 3.29 for 99.9% two-sided.
    const double rate = static_cast<double>(updates) / static_cast<double>(trials);
    const double bound = 3.29 * std::sqrt(p * (1 - p) / static_cast<double>(trials));
    EXPECT_NEAR(rate, 1.0 - p, bound) << granularity_name(g) << ": " << updates << " of " << trials << " updated";
  }
}

TEST(Teacher, ElementStatsAreInsideTheBound) {
  World w;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(Granularity::Element, 0.5f));
  const TeacherStats st = sm.stats_at(3);
  EXPECT_EQ(st.fragments, w.params.total_numel());
  EXPECT_DOUBLE_EQ(st.fragments_updated, st.params_updated);
  EXPECT_NEAR(st.fragments_updated, 0.5, 3.29 * std::sqrt(0.25 / static_cast<double>(st.fragments)));
}

// Element granularity: stats_at draws one decision per arena element, with the element's arena
// index as its fragment id, so its fraction is exactly the fraction of elements the kernel
// changed (the student and the blend differ from the old value everywhere here).
TEST(Teacher, ElementStatsMatchTheKernel) {
  World w;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(Granularity::Element, 0.5f));
  const std::vector<float> old = host_of(w.teacher);
  sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, 3);
  const std::vector<float> now = host_of(w.teacher);
  int64_t changed = 0;
  for (const Slot& s : w.params.slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) changed += !same_bits(old[size_t(i)], now[size_t(i)]);
  const TeacherStats st = sm.stats_at(3);
  EXPECT_DOUBLE_EQ(st.fragments_updated, static_cast<double>(changed) / static_cast<double>(w.params.total_numel()));
  EXPECT_DOUBLE_EQ(st.params_updated, st.fragments_updated);
}

// Element granularity walks four elements per Philox block; a slot whose size is not a
// multiple of 4 (conv2.bias, conv3.weight, bn3, fc.bias) must stop at its last element. The
// student's gaps hold 0 here, not canaries, so an SE copy past the end breaks a teacher canary.
TEST(Teacher, ElementUpdateStopsAtTheEndOfEachSlot) {
  World w;
  TeacherConfig c = sts_config(Granularity::Element, 0.5f);
  c.mode = SmoothingMode::Se;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
  std::vector<float> student(host_of(w.student).size(), 0.0f);
  const std::vector<float> values = host_of(w.student);
  for (const Slot& s : w.params.slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) student[size_t(i)] = values[size_t(i)];
  from_host(w.student.all(), student);
  for (int64_t step = 0; step < 8; ++step) sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, step);
  EXPECT_TRUE(w.teacher.broken_canaries().empty()) << "wrote past a slot: " << w.teacher.broken_canaries()[0];
}

// ---- fragment ages (the mosaic) ----------------------------------------------------------------

// Sets every parameter of `a` to `v` (gaps keep their canaries).
void fill_value_host(Arena& a, float v) {
  std::vector<float> host = to_host_f32(a.all());
  for (const Slot& s : a.table().slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) host[static_cast<size_t>(i)] = v;
  from_host(a.all(), host);
  a.write_canaries();
}

// The ages against what the kernel did: under Spatial Ensemble (m = 0) an update copies the
// student, so a student that holds the step number k at step k stamps every element with the
// step that last replaced it, and the teacher started as a copy of a student holding -1. Then
// age = k - stamp, element by element, at every step, for every granularity.
TEST(TeacherAges, EqualStepsSinceTheKernelLastReplacedEachElement) {
  for (Granularity g : {Granularity::Tensor, Granularity::Channel, Granularity::Element}) {
    World w;
    TeacherConfig c = sts_config(g, 0.6f);
    c.mode = SmoothingMode::Se;
    TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
    fill_value_host(w.student, -1.0f);
    sm.initialise(w.student, w.teacher, w.student_buf, w.teacher_buf);
    int64_t never_updated = 0, old = 0;  // so the test sees ages of k + 1 and ages above 1
    for (int64_t k = 0; k < 30; ++k) {
      fill_value_host(w.student, static_cast<float>(k));
      sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, k);
      const std::vector<float> t = host_of(w.teacher);
      const std::vector<SlotAges> ages = sm.ages_at(k);
      ASSERT_EQ(ages.size(), w.params.size());
      for (size_t s = 0; s < w.params.size(); ++s) {
        const Slot& slot = w.params[s];
        const SlotAges& a = ages[s];
        ASSERT_EQ(a.name, slot.name);
        ASSERT_EQ(static_cast<int64_t>(a.age.size()) * a.fragment_numel, slot.numel) << slot.name;
        for (int64_t e = 0; e < slot.numel; ++e) {
          const int64_t want = k - static_cast<int64_t>(t[static_cast<size_t>(slot.offset + e)]);
          const int64_t got = a.age[static_cast<size_t>(e / a.fragment_numel)];
          ASSERT_EQ(got, want) << granularity_name(g) << " step " << k << " " << slot.name << " element " << e;
          never_updated += got == k + 1;
          old += got > 1;
        }
      }
    }
    EXPECT_GT(never_updated, 0) << granularity_name(g);
    EXPECT_GT(old, 0) << granularity_name(g);
    w.expect_canaries_intact();
  }
}

// fragment_age against a forward simulation of every decision from step 0: age <- 0 when the
// draw updates, else age + 1; the simulation starts at age 0 (the initial copy) before step 0.
TEST(TeacherAges, WalkBackEqualsForwardSimulation) {
  for (float p : {0.3f, 0.7f, 0.95f}) {
    const uint64_t seed = 9;
    std::vector<int64_t> sim(50, 0);
    for (int64_t k = 0; k < 200; ++k)
      for (uint64_t f = 0; f < sim.size(); ++f) {
        const bool updated = !(kernels::philox_uniform(seed, kernels::kStreamTeacher, static_cast<uint64_t>(k), f) < p);
        sim[f] = updated ? 0 : sim[f] + 1;
        ASSERT_EQ(fragment_age(seed, p, f, k), sim[f]) << "p " << p << " step " << k << " fragment " << f;
      }
  }
}

// With skipped steps (--on-nonfinite skip) the walk back passes over them: a skipped step
// updates nothing, so in the forward simulation it only ages every fragment by one.
TEST(TeacherAges, WalkBackPassesOverSkippedSteps) {
  const uint64_t seed = 9;
  const float p = 0.5f;
  const std::vector<int64_t> skipped = {0, 3, 4, 9, 17};
  std::vector<int64_t> sim(50, 0);
  int64_t changed_by_skipping = 0;  // ages that differ from the walk without the skips
  for (int64_t k = 0; k < 30; ++k)
    for (uint64_t f = 0; f < sim.size(); ++f) {
      const bool skip = std::binary_search(skipped.begin(), skipped.end(), k);
      const bool updated = !skip && !(kernels::philox_uniform(seed, kernels::kStreamTeacher, uint64_t(k), f) < p);
      sim[f] = updated ? 0 : sim[f] + 1;
      const int64_t got = fragment_age(seed, p, f, k, skipped);
      ASSERT_EQ(got, sim[f]) << "step " << k << " fragment " << f;
      changed_by_skipping += got != fragment_age(seed, p, f, k);
    }
  EXPECT_GT(changed_by_skipping, 0) << "the skipped steps must matter to some age";
}

// TMA (p = 0) updates everything every step: age 0. `none` never updates: age k + 1. Ages
// do not depend on m: STS has the ages of SE with the same p and seed.
TEST(TeacherAges, ModesGiveTheirAges) {
  World w;
  for (SmoothingMode mode : {SmoothingMode::Tma, SmoothingMode::Copy, SmoothingMode::None}) {
    TeacherConfig c = sts_config(Granularity::Channel, 0.5f);
    c.mode = mode;
    const TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
    const int64_t want = mode == SmoothingMode::None ? 13 : 0;
    for (const SlotAges& a : sm.ages_at(12))
      for (int64_t age : a.age) ASSERT_EQ(age, want) << smoothing_mode_name(mode) << " " << a.name;
  }
  EXPECT_EQ(fragment_age(1, 0.0f, 5, 100), 0);
  TeacherConfig se = sts_config(Granularity::Channel, 0.5f), sts = se;
  se.mode = SmoothingMode::Se;
  const TeacherSmoother a(w.params, w.buffers, Device::CPU, se), b(w.params, w.buffers, Device::CPU, sts);
  for (int64_t k : {0, 7, 40}) {
    const std::vector<SlotAges> x = a.ages_at(k), y = b.ages_at(k);
    for (size_t s = 0; s < x.size(); ++s) ASSERT_EQ(x[s].age, y[s].age) << x[s].name;
  }
}

// The channel fragments a conv shares with its bias and BatchNorm are counted once; the layer
// updated fraction is the share of its parameters at age 0, i.e. stats_at's decision.
TEST(TeacherAges, StatsCountSharedFragmentsOnceAndMatchStatsAt) {
  World w;
  const TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(Granularity::Channel, 0.5f));
  for (int64_t k : {0, 5, 31}) {
    const std::vector<SlotAges> ages = sm.ages_at(k);
    const TeacherAgeStats st = age_stats(ages);
    EXPECT_EQ(st.fragments, w.params.channel_fragments());
    const TeacherStats upd = sm.stats_at(k);
    int64_t fresh_params = 0, params = 0;
    for (const TeacherAgeStats::Layer& l : st.layers) {
      fresh_params += static_cast<int64_t>(std::llround(l.updated * static_cast<double>(l.params)));
      params += l.params;
    }
    EXPECT_EQ(params, w.params.total_numel());
    EXPECT_DOUBLE_EQ(static_cast<double>(fresh_params) / static_cast<double>(params), upd.params_updated) << k;
    int64_t in_histogram = 0;
    for (int64_t n : st.histogram) in_histogram += n;
    EXPECT_EQ(in_histogram, st.fragments);
    EXPECT_DOUBLE_EQ(static_cast<double>(st.histogram[0]) / static_cast<double>(st.fragments), upd.fragments_updated);
  }
  // Layers: the slot names less their last part, in table order.
  std::vector<std::string> names;
  for (const TeacherAgeStats::Layer& l : age_stats(sm.ages_at(3)).layers) names.push_back(l.name);
  EXPECT_EQ(names, (std::vector<std::string>{"conv1", "bn1", "conv2", "conv3", "bn3", "fc", "big"}));
}

// The summary of hand-made ages: mean, parameter mean, nearest-rank quantiles, log2 bins.
TEST(TeacherAges, SummaryOfKnownAges) {
  EXPECT_EQ(age_bin(0), 0);
  EXPECT_EQ(age_bin(1), 1);
  EXPECT_EQ(age_bin(3), 2);
  EXPECT_EQ(age_bin(4), 3);
  EXPECT_EQ(age_bin(1000), 10);
  SlotAges a;  // a tensor of 4 elements, 4 fragments (element granularity)
  a.name = "l1.weight";
  a.shape = Shape{4};
  a.fragment_numel = 1;
  a.age = {0, 1, 2, 9};
  SlotAges b;  // one fragment of 6 elements
  b.name = "l2.weight";
  b.shape = Shape{2, 3};
  b.fragment_numel = 6;
  b.age = {5};
  SlotAges shared = b;  // shares l2's fragment: counted as parameters, not as a fragment
  shared.name = "l2.bias";
  shared.owns_fragments = false;
  const TeacherAgeStats st = age_stats({a, b, shared});
  EXPECT_EQ(st.fragments, 5);
  EXPECT_DOUBLE_EQ(st.mean, (0 + 1 + 2 + 9 + 5) / 5.0);
  EXPECT_DOUBLE_EQ(st.param_mean, (0 + 1 + 2 + 9 + 12 * 5) / 16.0);
  EXPECT_EQ(st.p50, 2);  // sorted 0 1 2 5 9: rank ceil(2.5) = 3
  EXPECT_EQ(st.p90, 9);
  EXPECT_EQ(st.max, 9);
  EXPECT_EQ(st.histogram, (std::vector<int64_t>{1, 1, 1, 1, 1}));  // 0 | 1 | 2 | 5 | 9
  ASSERT_EQ(st.layers.size(), 2u);
  EXPECT_EQ(st.layers[0].name, "l1");
  EXPECT_DOUBLE_EQ(st.layers[0].updated, 0.25);
  EXPECT_DOUBLE_EQ(st.layers[0].mean_age, 3.0);
  EXPECT_EQ(st.layers[1].params, 12);
  EXPECT_DOUBLE_EQ(st.layers[1].updated, 0.0);
  EXPECT_DOUBLE_EQ(st.layers[1].mean_age, 5.0);
  SlotAges bad = a;
  bad.age.pop_back();
  EXPECT_THROW(age_stats({bad}), Error);
}

// Nearest-rank quantiles of the ages 0 .. 99 (one fragment each): the q-quantile is the
// ceil(100 q)-th smallest age, i.e. ceil(100 q) - 1: p50 = 49, p90 = 89, p99 = 98.
TEST(TeacherAges, QuantilesOfAHundredAges) {
  SlotAges a;
  a.name = "l.weight";
  a.shape = Shape{100};
  a.fragment_numel = 1;
  for (int64_t k = 0; k < 100; ++k) a.age.push_back(k);
  const TeacherAgeStats st = age_stats({a});
  EXPECT_EQ(st.p50, 49);
  EXPECT_EQ(st.p90, 89);
  EXPECT_EQ(st.p99, 98);
  EXPECT_EQ(st.max, 99);
}

// The modes reduce to their definitions.
TEST(Teacher, ModesReduceToTheirDefinitions) {
  for (SmoothingMode mode : {SmoothingMode::None, SmoothingMode::Tma, SmoothingMode::Se, SmoothingMode::Copy}) {
    World w;
    TeacherConfig c = sts_config(Granularity::Channel, 0.5f);
    c.mode = mode;
    TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
    const std::vector<float> old = host_of(w.teacher), student = host_of(w.student);
    sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, 7);
    const std::vector<float> now = host_of(w.teacher);
    int64_t replaced = 0, total = 0;
    for (const Slot& s : w.params.slots())
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
        const size_t j = static_cast<size_t>(i);
        ++total;
        switch (mode) {
          case SmoothingMode::None: ASSERT_TRUE(same_bits(now[j], old[j])) << s.name; break;
          case SmoothingMode::Tma: ASSERT_TRUE(same_bits(now[j], blend(old[j], student[j], 0.9f))) << s.name; break;
          case SmoothingMode::Copy: ASSERT_TRUE(same_bits(now[j], student[j])) << s.name; break;
          default:  // se: each element is the old value or the student's, never a mix
            ASSERT_TRUE(same_bits(now[j], old[j]) || same_bits(now[j], student[j])) << s.name;
            replaced += same_bits(now[j], student[j]);
        }
      }
    if (mode == SmoothingMode::Se) {
      EXPECT_GT(replaced, 0);
      EXPECT_LT(replaced, total);
    }
    EXPECT_EQ(sm.state().step, 8);
    w.expect_canaries_intact();
  }
}

TEST(Teacher, InitialiseCopiesEverythingWhateverTheMode) {
  World w;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(Granularity::Tensor, 0.99f));
  float inf = INFINITY;
  std::vector<float> t = host_of(w.teacher);
  t[0] = inf;  // a copy must not carry an inf through 0 * inf
  from_host(w.teacher.all(), t);
  sm.initialise(w.student, w.teacher, w.student_buf, w.teacher_buf);
  const std::vector<float> s = host_of(w.student), now = host_of(w.teacher);
  for (const Slot& sl : w.params.slots())
    for (int64_t i = sl.offset; i < sl.offset + sl.numel; ++i)
      ASSERT_TRUE(same_bits(now[static_cast<size_t>(i)], s[static_cast<size_t>(i)])) << sl.name;
  const std::vector<float> sb = host_of(w.student_buf), tb = host_of(w.teacher_buf);
  for (const Slot& sl : w.buffers.slots())
    for (int64_t i = sl.offset; i < sl.offset + sl.numel; ++i)
      ASSERT_TRUE(same_bits(tb[static_cast<size_t>(i)], sb[static_cast<size_t>(i)])) << sl.name;
  w.expect_canaries_intact();
}

TEST(Teacher, BnBufferPolicies) {
  for (BnBufferPolicy policy : {BnBufferPolicy::Own, BnBufferPolicy::Copy, BnBufferPolicy::Ema}) {
    World w;
    TeacherConfig c = sts_config(Granularity::Tensor);
    c.bn_buffers = policy;
    TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
    const std::vector<float> old = host_of(w.teacher_buf), student = host_of(w.student_buf);
    sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, 0);
    const std::vector<float> now = host_of(w.teacher_buf);
    for (const Slot& s : w.buffers.slots())
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
        const size_t j = static_cast<size_t>(i);
        const float want = policy == BnBufferPolicy::Own    ? old[j]
                           : policy == BnBufferPolicy::Copy ? student[j]
                                                            : blend(old[j], student[j], 0.9f);
        ASSERT_TRUE(same_bits(now[j], want)) << bn_buffer_policy_name(policy) << " " << s.name;
      }
    w.expect_canaries_intact();
  }
}

TEST(Teacher, CosineMomentumSchedule) {
  World w;
  TeacherConfig c = sts_config(Granularity::Tensor);
  c.momentum = 0.99f;
  c.schedule = MomentumSchedule::Cosine;
  c.total_steps = 1000;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
  EXPECT_FLOAT_EQ(sm.momentum_at(0), 0.99f);
  EXPECT_FLOAT_EQ(sm.momentum_at(500), 0.995f);
  EXPECT_FLOAT_EQ(sm.momentum_at(1000), 1.0f);
  EXPECT_FLOAT_EQ(sm.momentum_at(250), static_cast<float>(1 - 0.01 * (std::cos(M_PI / 4) + 1) / 2));
  // k is clamped to [0, K] (as the learning-rate schedules do): before step 0 the schedule
  // gives m_0, not the mirror image cos(-x) = cos(x) of a later step.
  EXPECT_EQ(sm.momentum_at(-500), 0.99f);
}

// The ends of the ranges are valid: m = 1 (where the cosine schedule ends: a frozen teacher)
// and p = 1 (never update). Either way the teacher keeps its values bit for bit.
TEST(Teacher, MomentumOneAndPreserveProbOneAreAcceptedAndKeepTheTeacher) {
  for (const auto& [mode, m, p] :
       {std::tuple{SmoothingMode::Tma, 1.0f, 0.7f}, std::tuple{SmoothingMode::Se, 0.9f, 1.0f}}) {
    World w;
    TeacherConfig c = sts_config(Granularity::Channel, p);
    c.mode = mode;
    c.momentum = m;
    std::unique_ptr<TeacherSmoother> sm;
    ASSERT_NO_THROW(sm = std::make_unique<TeacherSmoother>(w.params, w.buffers, Device::CPU, c))
        << smoothing_mode_name(mode);
    const std::vector<float> old = host_of(w.teacher);
    sm->update(w.student, w.teacher, w.student_buf, w.teacher_buf, 2);
    const std::vector<float> now = host_of(w.teacher);
    EXPECT_EQ(0, std::memcmp(old.data(), now.data(), old.size() * sizeof(float))) << smoothing_mode_name(mode);
  }
}

// Same seed: same masks. Different step: different masks. Different seed: different masks.
TEST(Teacher, MasksArePureFunctionsOfSeedAndStep) {
  auto teacher_after = [](uint64_t seed, int64_t step) {
    World w;
    TeacherConfig c = sts_config(Granularity::Element, 0.5f);
    c.seed = seed;
    TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
    sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, step);
    return host_of(w.teacher);
  };
  const std::vector<float> a = teacher_after(5, 3), b = teacher_after(5, 3);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(a.data(), teacher_after(5, 4).data(), a.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(a.data(), teacher_after(6, 3).data(), a.size() * sizeof(float)));
}

// update() under the cosine schedule applies the m_k of the step it is given (the formula
// written out in tests/teacher_replay.h), to the parameters (TMA: every element blended) and,
// under --bn-buffers ema, to the buffers; past K the momentum stays at 1. Under SE the
// parameters are a masked copy (momentum 0), but the buffers' EMA still takes the schedule's
// m_k.
void expect_cosine_momentum_of_each_step(SmoothingMode mode) {
  World w;
  TeacherConfig c = sts_config(Granularity::Tensor);
  c.mode = mode;
  c.momentum = 0.9f;
  c.schedule = MomentumSchedule::Cosine;
  c.total_steps = 10;
  c.bn_buffers = BnBufferPolicy::Ema;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, c);
  for (int64_t step : {0, 3, 5, 9, 10, 12}) {
    w.new_student(200 + static_cast<uint64_t>(step));
    fill_random(w.student_buf, 300 + static_cast<uint64_t>(step));
    const std::vector<float> old = host_of(w.teacher), student = host_of(w.student);
    const std::vector<float> old_buf = host_of(w.teacher_buf), student_buf = host_of(w.student_buf);
    sm.update(w.student, w.teacher, w.student_buf, w.teacher_buf, step);
    const float m = replay::cosine_momentum(0.9f, step, 10);
    const std::vector<float> now = host_of(w.teacher), now_buf = host_of(w.teacher_buf);
    if (mode == SmoothingMode::Tma)
      for (const Slot& s : w.params.slots())
        for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
          const size_t j = static_cast<size_t>(i);
          ASSERT_TRUE(same_bits(now[j], blend(old[j], student[j], m)))
              << s.name << " at step " << step << ": " << now[j] << ", m_k = " << m << " gives "
              << blend(old[j], student[j], m);
        }
    for (const Slot& s : w.buffers.slots())
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
        const size_t j = static_cast<size_t>(i);
        ASSERT_TRUE(same_bits(now_buf[j], blend(old_buf[j], student_buf[j], m))) << s.name << " at step " << step;
      }
  }
  w.expect_canaries_intact();
}

TEST(Teacher, UpdateAppliesTheCosineMomentumOfItsStep) {
  {
    SCOPED_TRACE("tma");
    expect_cosine_momentum_of_each_step(SmoothingMode::Tma);
  }
  {
    SCOPED_TRACE("se: the parameters a masked copy, the buffers still an EMA");
    expect_cosine_momentum_of_each_step(SmoothingMode::Se);
  }
  // The schedule moves: the steps above did not all share one momentum.
  EXPECT_NE(replay::cosine_momentum(0.9f, 3, 10), replay::cosine_momentum(0.9f, 5, 10));
  EXPECT_EQ(replay::cosine_momentum(0.9f, 12, 10), 1.0f);
}

// A smoother and its teacher saved the way the programs save them - the teacher model through
// the checkpoint writer (parameters and BN buffers), the smoother's state as metadata - and
// restored into fresh objects: the restored teacher and state equal the saved ones bit for
// bit, and continuing gives exactly the uninterrupted run's teacher, buffers included.
// Cosine schedule (so the step taken from the state matters to m_k), channel fragments, and
// the default BN policy (own): the teacher's statistics are its own forwards', simulated
// here by BatchNorm's running update so that they carry history across the resume.
//
// (Not --bn-buffers ema: it averages num_batches_tracked too, into a fraction that the
// checkpoint, which stores the count as an int64 as PyTorch does, truncates.)
TEST(Teacher, ResumeThroughACheckpointFileRestoresParametersBuffersAndStep) {
  ModelSpec spec;
  spec.arch = "mlp";
  spec.mlp_sizes = {6, 10, 4};  // Linear - BatchNorm1d - ReLU - Linear
  TeacherConfig c = sts_config(Granularity::Channel, 0.5f);
  c.schedule = MomentumSchedule::Cosine;
  c.total_steps = 10;
  c.bn_buffers = BnBufferPolicy::Own;
  struct Run {
    std::unique_ptr<Model> student, teacher;
    std::unique_ptr<TeacherSmoother> smoother;
    Run(const ModelSpec& spec, const TeacherConfig& c) {
      student = make_model(spec, Device::CPU);
      teacher = make_model(spec, Device::CPU);
      student->init(11);
      smoother = std::make_unique<TeacherSmoother>(student->param_table(), student->buffer_table(), Device::CPU, c);
      smoother->initialise(student->params(), teacher->params(), student->buffers(), teacher->buffers());
    }
    // Step k: a new student, the teacher update, then the teacher's own forward as far as its
    // buffers go (running = 0.9 running + 0.1 batch statistic, one more batch tracked).
    void steps(int64_t from, int64_t to) {
      for (int64_t k = from; k < to; ++k) {
        fill_random(student->params(), 400 + static_cast<uint64_t>(k));
        smoother->update(student->params(), teacher->params(), student->buffers(), teacher->buffers(), k);
        std::vector<float> b = to_host_f32(teacher->buffers().all());
        for (const Slot& s : teacher->buffer_table().slots())
          for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
            float& v = b[static_cast<size_t>(i)];
            const float batch = kernels::philox_uniform(500 + static_cast<uint64_t>(k), kernels::kStreamTest, 0,
                                                        static_cast<uint64_t>(i));
            v = s.kind == ParamKind::BnNumBatches ? v + 1.0f : 0.9f * v + 0.1f * batch;
          }
        from_host(teacher->buffers().all(), b);
      }
    }
  };
  Run whole(spec, c);
  whole.steps(0, 10);

  Run first(spec, c);
  first.steps(0, 5);
  const std::string path = ::testing::TempDir() + "tessera_teacher_resume_" + std::to_string(::getpid()) + ".safetensors";
  {
    SafetensorsWriter w;
    add_model(w, *first.teacher, "teacher.");
    for (const auto& kv : first.smoother->state().to_strings()) w.add_metadata(kv.first, kv.second);
    w.write(path);
  }
  const SafetensorsFile f = SafetensorsFile::read(path);
  std::remove(path.c_str());

  // Fresh objects whose teacher holds something else entirely, so a restore that skips a
  // tensor shows.
  Run rest(spec, c);
  rest.teacher->init(99);
  fill_random(rest.teacher->buffers(), 98);
  load_model(f, *rest.teacher, "teacher.");
  rest.smoother->restore(TeacherState::from_strings(f.metadata()));
  EXPECT_EQ(rest.smoother->state().to_strings(), first.smoother->state().to_strings());
  ASSERT_EQ(rest.smoother->state().step, 5);
  const std::vector<float> saved_p = host_of(first.teacher->params()), got_p = host_of(rest.teacher->params());
  const std::vector<float> saved_b = host_of(first.teacher->buffers()), got_b = host_of(rest.teacher->buffers());
  for (const Slot& s : first.teacher->param_table().slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i)
      ASSERT_TRUE(same_bits(saved_p[static_cast<size_t>(i)], got_p[static_cast<size_t>(i)])) << "restored " << s.name;
  for (const Slot& s : first.teacher->buffer_table().slots())
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i)
      ASSERT_TRUE(same_bits(saved_b[static_cast<size_t>(i)], got_b[static_cast<size_t>(i)]))
          << "restored " << s.name << ": " << got_b[static_cast<size_t>(i)] << ", saved " << saved_b[static_cast<size_t>(i)];

  rest.steps(rest.smoother->state().step, 10);
  EXPECT_EQ(rest.smoother->state().to_strings(), whole.smoother->state().to_strings());
  for (const auto& [what, want, got] :
       {std::tuple{"parameters", host_of(whole.teacher->params()), host_of(rest.teacher->params())},
        std::tuple{"buffers", host_of(whole.teacher->buffers()), host_of(rest.teacher->buffers())}}) {
    ASSERT_EQ(want.size(), got.size());
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float))) << what << " after resume";
  }
}

TEST(Teacher, StateStringsRoundTripAndRejectBadInput) {
  TeacherState s;
  s.config = sts_config(Granularity::Element, 0.123456789f);
  s.config.seed = 0xfedcba9876543210ull;
  s.config.bn_buffers = BnBufferPolicy::Ema;
  s.step = 123456;
  const TeacherState r = TeacherState::from_strings(s.to_strings());
  EXPECT_EQ(r.to_strings(), s.to_strings());
  EXPECT_EQ(r.config.seed, s.config.seed);
  EXPECT_EQ(r.config.preserve_prob, s.config.preserve_prob);
  auto kv = s.to_strings();
  kv.erase("smoothing.seed");
  EXPECT_THROW(TeacherState::from_strings(kv), Error);
  kv = s.to_strings();
  kv["smoothing.step"] = "12x";
  EXPECT_THROW(TeacherState::from_strings(kv), Error);
  kv["smoothing.step"] = "-1";  // strtoull would wrap it to 2^64 - 1
  EXPECT_THROW(TeacherState::from_strings(kv), Error);
  // A checkpoint made with other flags is refused, naming the key.
  World w;
  TeacherSmoother sm(w.params, w.buffers, Device::CPU, sts_config(Granularity::Tensor));
  try {
    sm.restore(s);
    FAIL() << "restore accepted a different configuration";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("smoothing.bn_buffers"), std::string::npos) << e.what();
  }
  TeacherState negative = sm.state();
  negative.step = -1;
  EXPECT_THROW(sm.restore(negative), Error);
}

TEST(Teacher, BadFlagsAreUsageErrors) {
  EXPECT_THROW(parse_smoothing_mode("ema"), UsageError);
  EXPECT_THROW(parse_granularity("layer"), UsageError);
  EXPECT_EQ(parse_granularity("channel"), Granularity::Channel);
  ParamTable p = test_table(), b = buffer_table();
  TeacherConfig c;
  c.preserve_prob = 1.5f;
  EXPECT_THROW(TeacherSmoother(p, b, Device::CPU, c), UsageError);
  c.preserve_prob = 0.5f;
  c.schedule = MomentumSchedule::Cosine;
  c.total_steps = 0;
  EXPECT_THROW(TeacherSmoother(p, b, Device::CPU, c), UsageError);
}

// GPU: the CUDA kernel (kernels/common/philox.h on the device, float4 path) against the CPU
// reference, bit for bit, for every mode and granularity over several steps.
TEST(TeacherCuda, BitIdenticalToCpu) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA vs CPU teacher not run: " << reason;
  for (Granularity g : {Granularity::Tensor, Granularity::Channel, Granularity::Element}) {
    for (SmoothingMode mode : {SmoothingMode::Tma, SmoothingMode::Se, SmoothingMode::Sts, SmoothingMode::Copy}) {
      TeacherConfig c = sts_config(g, 0.5f);
      c.mode = mode;
      c.bn_buffers = BnBufferPolicy::Ema;
      World cpu, gpu(Device::CUDA);
      TeacherSmoother scpu(cpu.params, cpu.buffers, Device::CPU, c);
      TeacherSmoother sgpu(gpu.params, gpu.buffers, Device::CUDA, c);
      for (int64_t k = 0; k < 4; ++k) {
        cpu.new_student(70 + static_cast<uint64_t>(k));
        gpu.new_student(70 + static_cast<uint64_t>(k));
        scpu.update(cpu.student, cpu.teacher, cpu.student_buf, cpu.teacher_buf, k);
        sgpu.update(gpu.student, gpu.teacher, gpu.student_buf, gpu.teacher_buf, k);
      }
      for (auto [x, y] : {std::pair{&cpu.teacher, &gpu.teacher}, std::pair{&cpu.teacher_buf, &gpu.teacher_buf}}) {
        const std::vector<float> want = host_of(*x), got = host_of(*y);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_TRUE(same_bits(want[i], got[i])) << granularity_name(g) << " " << smoothing_mode_name(mode)
                                                  << ": element " << i << " cpu " << want[i] << " cuda " << got[i];
      }
      gpu.expect_canaries_intact();
    }
  }
}

}  // namespace
}  // namespace tessera
