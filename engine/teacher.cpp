#include "engine/teacher.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "kernels/common/philox.h"
#include "kernels/teacher_update.h"

namespace tessera {

namespace {

template <typename E, size_t N>
E parse_choice(const std::string& s, const char* flag, const char* const (&names)[N]) {
  std::string options;
  for (size_t i = 0; i < N; ++i) {
    if (s == names[i]) return static_cast<E>(i);
    options += (i ? "|" : "") + std::string(names[i]);
  }
  throw UsageError(cat(flag, ": expected ", options, ", found '", s, "'"));
}

const char* const kModeNames[] = {"none", "tma", "se", "sts", "copy"};
const char* const kGranularityNames[] = {"tensor", "channel", "element"};
const char* const kScheduleNames[] = {"constant", "cosine"};
const char* const kBnNames[] = {"own", "copy", "ema"};

constexpr int64_t kChunk = 4096;  // kernels::cpu::kTeacherChunk and its CUDA twin
static_assert(kChunk == kernels::cpu::kTeacherChunk, "one chunk size for both backends");

}  // namespace

SmoothingMode parse_smoothing_mode(const std::string& s) {
  return parse_choice<SmoothingMode>(s, "--smoothing", kModeNames);
}
Granularity parse_granularity(const std::string& s) {
  return parse_choice<Granularity>(s, "--granularity", kGranularityNames);
}
MomentumSchedule parse_momentum_schedule(const std::string& s) {
  return parse_choice<MomentumSchedule>(s, "--momentum-schedule", kScheduleNames);
}
BnBufferPolicy parse_bn_buffer_policy(const std::string& s) {
  return parse_choice<BnBufferPolicy>(s, "--bn-buffers", kBnNames);
}
const char* smoothing_mode_name(SmoothingMode m) { return kModeNames[static_cast<int>(m)]; }
const char* granularity_name(Granularity g) { return kGranularityNames[static_cast<int>(g)]; }
const char* momentum_schedule_name(MomentumSchedule s) { return kScheduleNames[static_cast<int>(s)]; }
const char* bn_buffer_policy_name(BnBufferPolicy b) { return kBnNames[static_cast<int>(b)]; }

// ---- state as strings --------------------------------------------------------------------

std::map<std::string, std::string> TeacherState::to_strings() const {
  char p[32], m[32];
  // %.9g round-trips every float exactly.
  std::snprintf(p, sizeof p, "%.9g", static_cast<double>(config.preserve_prob));
  std::snprintf(m, sizeof m, "%.9g", static_cast<double>(config.momentum));
  return {{"smoothing.mode", smoothing_mode_name(config.mode)},
          {"smoothing.granularity", granularity_name(config.granularity)},
          {"smoothing.preserve_prob", p},
          {"smoothing.momentum", m},
          {"smoothing.momentum_schedule", momentum_schedule_name(config.schedule)},
          {"smoothing.total_steps", std::to_string(config.total_steps)},
          {"smoothing.bn_buffers", bn_buffer_policy_name(config.bn_buffers)},
          {"smoothing.seed", std::to_string(config.seed)},
          {"smoothing.step", std::to_string(step)}};
}

TeacherState TeacherState::from_strings(const std::map<std::string, std::string>& kv) {
  auto get = [&](const char* key) -> const std::string& {
    auto it = kv.find(key);
    if (it == kv.end()) throw Error(cat("teacher state: key '", key, "' missing"));
    return it->second;
  };
  auto number = [&](const char* key, bool is_float) {
    const std::string& v = get(key);
    char* end = nullptr;
    errno = 0;
    const double d = is_float ? std::strtod(v.c_str(), &end) : 0.0;
    const unsigned long long u = is_float ? 0 : std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || (!is_float && v[0] == '-'))
      throw Error(cat("teacher state: key '", key, "' expected a number, found '", v, "'"));
    return std::make_pair(d, u);
  };
  auto choice = [&](auto parse, const char* key) {
    try {
      return parse(get(key));
    } catch (const UsageError& e) {
      throw Error(cat("teacher state: key '", key, "': ", e.what()));
    }
  };
  TeacherState s;
  s.config.mode = choice(parse_smoothing_mode, "smoothing.mode");
  s.config.granularity = choice(parse_granularity, "smoothing.granularity");
  s.config.schedule = choice(parse_momentum_schedule, "smoothing.momentum_schedule");
  s.config.bn_buffers = choice(parse_bn_buffer_policy, "smoothing.bn_buffers");
  s.config.preserve_prob = static_cast<float>(number("smoothing.preserve_prob", true).first);
  s.config.momentum = static_cast<float>(number("smoothing.momentum", true).first);
  s.config.total_steps = static_cast<int64_t>(number("smoothing.total_steps", false).second);
  s.config.seed = static_cast<uint64_t>(number("smoothing.seed", false).second);
  s.step = static_cast<int64_t>(number("smoothing.step", false).second);
  return s;
}

// ---- the smoother ------------------------------------------------------------------------

std::vector<kernels::TeacherSlot> teacher_slots(const ParamTable& table) {
  std::vector<kernels::TeacherSlot> rows;
  for (size_t i = 0; i < table.size(); ++i) {
    const Slot& s = table[i];
    kernels::TeacherSlot t;
    t.offset = s.offset;
    t.numel = s.numel;
    t.row_numel = s.numel / s.channels;
    t.channel_fragment_base = s.channel_fragment_base;
    t.index = static_cast<int32_t>(i);
    rows.push_back(t);
  }
  return rows;
}

TeacherSmoother::TeacherSmoother(const ParamTable& params, const ParamTable& buffers, Device device,
                                 TeacherConfig config)
    : params_(params),
      buffers_(buffers),
      device_(device),
      param_slots_(teacher_slots(params), device),
      buffer_slots_(teacher_slots(buffers), device),
      param_chunks_(arena_chunks(params, kChunk), device),
      buffer_chunks_(arena_chunks(buffers, kChunk), device) {
  const TeacherConfig& c = config;
  if (!(c.preserve_prob >= 0.0f && c.preserve_prob <= 1.0f))
    throw UsageError(cat("--preserve-prob: expected a probability in [0, 1], found ", c.preserve_prob));
  if (!(c.momentum >= 0.0f && c.momentum <= 1.0f))
    throw UsageError(cat("--momentum: expected a value in [0, 1], found ", c.momentum));
  if (c.schedule == MomentumSchedule::Cosine && c.total_steps <= 0)
    throw UsageError(cat("--momentum-schedule cosine: needs the total number of steps (> 0), found ",
                         c.total_steps));
  state_.config = config;
}

float TeacherSmoother::momentum_at(int64_t step) const {
  const SmoothingMode m = state_.config.mode;
  return m == SmoothingMode::Se || m == SmoothingMode::Copy ? 0.0f : scheduled_momentum(step);
}

float TeacherSmoother::scheduled_momentum(int64_t step) const {
  const TeacherConfig& c = state_.config;
  if (c.schedule == MomentumSchedule::Constant) return c.momentum;
  // BYOL: m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2, from m_0 at k = 0 to 1 at k = K.
  const double k = static_cast<double>(std::min(std::max<int64_t>(step, 0), c.total_steps));
  const double K = static_cast<double>(c.total_steps);
  return static_cast<float>(1.0 - (1.0 - c.momentum) * (std::cos(M_PI * k / K) + 1.0) / 2.0);
}

float TeacherSmoother::preserve_prob() const {
  const SmoothingMode m = state_.config.mode;
  return m == SmoothingMode::Se || m == SmoothingMode::Sts ? state_.config.preserve_prob : 0.0f;
}

void TeacherSmoother::apply(const kernels::TeacherRule& rule, const ParamTable& table,
                            const DeviceTable<kernels::TeacherSlot>& slots,
                            const DeviceTable<kernels::ArenaChunk>& chunks, const Arena& student,
                            Arena& teacher) const {
  TS_CHECK(student.table().same_layout(table) && teacher.table().same_layout(table),
           "teacher update: student and teacher arenas must have the smoother's parameter table");
  TS_CHECK(student.device() == device_ && teacher.device() == device_, "teacher update: arenas on ",
           device_name(student.device()), " and ", device_name(teacher.device()), ", smoother built for ",
           device_name(device_));
  if (chunks.size() == 0) return;
  // Profiles: expected cost, 12 bytes and 3 FLOPs per updated parameter (kernels/teacher_update.h),
  // a fraction 1 - p of them; labelled by the smoothing mode ("teacher_update/sts").
  profile::LayerScope layer(smoothing_mode_name(state_.config.mode));
  const auto cost = [&rule, &table] {
    const double updated = (1.0 - rule.preserve_prob) * static_cast<double>(table.total_numel());
    return kernels::Cost{12.0 * updated, 3.0 * updated};
  };
  TS_DISPATCH_COST(device_, teacher_update, cost(), slots.data(), chunks.data(), chunks.size(), student.data(),
              teacher.data(), rule);
}

void TeacherSmoother::update(const Arena& student_params, Arena& teacher_params, const Arena& student_buffers,
                             Arena& teacher_buffers, int64_t step) {
  TS_CHECK(step >= 0, "teacher update: step must be >= 0, found ", step);
  const TeacherConfig& c = state_.config;
  if (c.mode != SmoothingMode::None) {
    kernels::TeacherRule rule{c.seed, static_cast<uint64_t>(step), preserve_prob(), momentum_at(step),
                              c.granularity, skip_};
    apply(rule, params_, param_slots_, param_chunks_, student_params, teacher_params);
    if (c.bn_buffers != BnBufferPolicy::Own) {
      // Buffers are never masked: their fragment numbering is not their layer's, so a mask
      // could not follow the layer's decision. Copy, or a plain EMA with the schedule's m_k.
      rule.preserve_prob = 0.0f;
      rule.momentum = 0.0f;
      if (c.bn_buffers == BnBufferPolicy::Ema) rule.momentum = scheduled_momentum(step);
      apply(rule, buffers_, buffer_slots_, buffer_chunks_, student_buffers, teacher_buffers);
    }
  }
  state_.step = step + 1;
}

void TeacherSmoother::initialise(const Arena& student_params, Arena& teacher_params,
                                 const Arena& student_buffers, Arena& teacher_buffers) {
  const kernels::TeacherRule copy{state_.config.seed, 0, 0.0f, 0.0f, state_.config.granularity};
  apply(copy, params_, param_slots_, param_chunks_, student_params, teacher_params);
  apply(copy, buffers_, buffer_slots_, buffer_chunks_, student_buffers, teacher_buffers);
}

namespace {
bool is_skipped(const std::vector<int64_t>& skipped, int64_t step) {
  return std::binary_search(skipped.begin(), skipped.end(), step);
}
}  // namespace

TeacherStats TeacherSmoother::stats_at(int64_t step) const {
  const TeacherConfig& c = state_.config;
  const float p = preserve_prob();
  TeacherStats st;
  const std::vector<kernels::TeacherSlot>& slots = param_slots_.host();
  switch (c.granularity) {
    case Granularity::Tensor: st.fragments = static_cast<int64_t>(slots.size()); break;
    case Granularity::Channel: st.fragments = params_.channel_fragments(); break;
    case Granularity::Element: st.fragments = params_.total_numel(); break;
  }
  if (c.mode == SmoothingMode::None || st.fragments == 0) return st;
  if (skipped_steps_ && is_skipped(skipped_steps_(), step)) return st;  // nothing was updated
  if (p <= 0.0f) {
    st.fragments_updated = st.params_updated = 1.0;
    return st;
  }
  auto updated = [&](uint64_t f) {
    return !kernels::sts_keep(kernels::philox_uniform(c.seed, kernels::kStreamTeacher, static_cast<uint64_t>(step), f), p);
  };
  int64_t fragments = 0, params = 0;
  if (c.granularity == Granularity::Tensor) {
    for (const kernels::TeacherSlot& s : slots)
      if (updated(static_cast<uint64_t>(s.index))) {
        ++fragments;
        params += s.numel;
      }
  } else if (c.granularity == Granularity::Channel) {
    std::vector<char> decision(static_cast<size_t>(st.fragments));
    for (int64_t f = 0; f < st.fragments; ++f) {
      decision[static_cast<size_t>(f)] = updated(static_cast<uint64_t>(f));
      fragments += decision[static_cast<size_t>(f)];
    }
    for (const kernels::TeacherSlot& s : slots)
      for (int64_t r = 0; r < s.numel / s.row_numel; ++r)
        if (decision[static_cast<size_t>(s.channel_fragment_base + r)]) params += s.row_numel;
  } else {
    // One draw per element: O(parameters) on the host, so call it at logging intervals.
#pragma omp parallel for reduction(+ : fragments) schedule(dynamic, 16)
    for (size_t k = 0; k < slots.size(); ++k)
      for (int64_t i = slots[k].offset; i < slots[k].offset + slots[k].numel; ++i)
        fragments += updated(static_cast<uint64_t>(i));
    params = fragments;
  }
  st.fragments_updated = static_cast<double>(fragments) / static_cast<double>(st.fragments);
  st.params_updated = static_cast<double>(params) / static_cast<double>(params_.total_numel());
  return st;
}

// ---- the mosaic -----------------------------------------------------------------------------

int64_t fragment_age(uint64_t seed, float preserve_prob, uint64_t fragment, int64_t step,
                     const std::vector<int64_t>& skipped) {
  TS_CHECK(step >= 0, "fragment age: step must be >= 0, found ", step);
  for (int64_t j = step; j >= 0; --j) {
    if (!skipped.empty() && is_skipped(skipped, j)) continue;
    if (preserve_prob <= 0.0f) return step - j;  // the kernel updates every fragment without a draw
    if (!kernels::sts_keep(kernels::philox_uniform(seed, kernels::kStreamTeacher, static_cast<uint64_t>(j), fragment),
                           preserve_prob))
      return step - j;
  }
  return step + 1;
}

namespace {

// Element granularity: the ages of arena elements [begin, end), begin a multiple of 4 (slots
// start on aligned offsets). As in the kernel, the draws of elements g .. g + 3 are the four
// words of Philox block g / 4, so one block per step walked serves four elements: the same
// ages as fragment_age, with fewer blocks.
void element_ages(uint64_t seed, float p, int64_t begin, int64_t end, int64_t step, const std::vector<int64_t>& skipped,
                  int64_t* age) {
#pragma omp parallel for schedule(dynamic, 256)
  for (int64_t g = begin; g < end; g += 4) {
    const int64_t n = std::min<int64_t>(4, end - g);
    int64_t* a = age + (g - begin);
    int open = static_cast<int>(n);  // elements whose last update is not found yet
    bool found[4] = {false, false, false, false};
    for (int64_t j = step; j >= 0 && open > 0; --j) {
      if (!skipped.empty() && is_skipped(skipped, j)) continue;
      const kernels::Philox4 w =
          kernels::PhiloxState(seed, kernels::philox_subsequence(kernels::kStreamTeacher, static_cast<uint64_t>(j)),
                               static_cast<uint64_t>(g))
              .output;
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
      for (int64_t e = 0; e < n; ++e)
        if (!found[e] && !kernels::sts_keep(kernels::philox_to_uniform(words[e]), p)) {
          found[e] = true;
          a[e] = step - j;
          --open;
        }
    }
    for (int64_t e = 0; e < n; ++e)
      if (!found[e]) a[e] = step + 1;
  }
}

}  // namespace

int age_bin(int64_t age) {
  int b = 0;
  while (age > 0) {
    ++b;
    age >>= 1;
  }
  return b;  // 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ...
}

std::vector<SlotAges> TeacherSmoother::ages_at(int64_t step) const {
  TS_CHECK(step >= 0, "teacher ages: step must be >= 0, found ", step);
  const TeacherConfig& c = state_.config;
  const float p = preserve_prob();
  const std::vector<int64_t> skipped = skipped_steps_ ? skipped_steps_() : std::vector<int64_t>();
  std::vector<SlotAges> out;
  int64_t next_channel = 0;  // channel ids below this belong to an earlier slot
  for (size_t k = 0; k < params_.size(); ++k) {
    const Slot& s = params_[k];
    SlotAges a;
    a.name = s.name;
    a.shape = s.shape;
    a.fragment_numel = c.granularity == Granularity::Tensor    ? s.numel
                       : c.granularity == Granularity::Channel ? s.numel / s.channels
                                                               : 1;
    if (c.granularity == Granularity::Channel) {
      a.owns_fragments = s.channel_fragment_base >= next_channel;
      next_channel = std::max(next_channel, s.channel_fragment_base + s.channels);
    }
    const int64_t n = s.numel / a.fragment_numel;
    a.age.assign(static_cast<size_t>(n), 0);
    // The fragment id of the slot's r-th fragment, as kernels::teacher_fragment numbers it.
    auto id = [&](int64_t r) -> uint64_t {
      switch (c.granularity) {
        case Granularity::Tensor: return static_cast<uint64_t>(k);
        case Granularity::Channel: return static_cast<uint64_t>(s.channel_fragment_base + r);
        case Granularity::Element: break;
      }
      return static_cast<uint64_t>(s.offset + r);
    };
    if (c.mode == SmoothingMode::None) {
      a.age.assign(static_cast<size_t>(n), step + 1);
    } else if (c.granularity == Granularity::Element && p > 0.0f) {
      TS_CHECK(s.offset % 4 == 0, "teacher ages: slot '", s.name, "' starts at ", s.offset, ", not a multiple of 4");
      element_ages(c.seed, p, s.offset, s.offset + s.numel, step, skipped, a.age.data());
    } else {
#pragma omp parallel for schedule(dynamic, 64) if (n > 1024)
      for (int64_t r = 0; r < n; ++r) a.age[static_cast<size_t>(r)] = fragment_age(c.seed, p, id(r), step, skipped);
    }
    out.push_back(std::move(a));
  }
  return out;
}

TeacherAgeStats age_stats(const std::vector<SlotAges>& slots) {
  TeacherAgeStats st;
  std::vector<int64_t> ages;  // one per distinct fragment
  double param_sum = 0;
  int64_t params = 0;
  std::map<std::string, size_t> layer_index;
  std::vector<double> layer_age_sum;
  std::vector<int64_t> layer_fresh;
  for (const SlotAges& a : slots) {
    TS_CHECK(a.fragment_numel > 0 && static_cast<int64_t>(a.age.size()) * a.fragment_numel == a.shape.numel(),
             "teacher ages of '", a.name, "': expected ", a.shape.numel(), " elements, found ", a.age.size(),
             " fragments of ", a.fragment_numel);
    const size_t dot = a.name.rfind('.');
    const std::string layer = dot == std::string::npos ? a.name : a.name.substr(0, dot);
    auto [it, added] = layer_index.emplace(layer, st.layers.size());
    if (added) {
      st.layers.push_back({layer, 0, 0, 0});
      layer_age_sum.push_back(0);
      layer_fresh.push_back(0);
    }
    const size_t l = it->second;
    for (int64_t age : a.age) {
      if (a.owns_fragments) ages.push_back(age);
      const double weight = static_cast<double>(a.fragment_numel);
      param_sum += weight * static_cast<double>(age);
      layer_age_sum[l] += weight * static_cast<double>(age);
      if (age == 0) layer_fresh[l] += a.fragment_numel;
    }
    params += a.shape.numel();
    st.layers[l].params += a.shape.numel();
  }
  for (size_t l = 0; l < st.layers.size(); ++l) {
    const double n = static_cast<double>(st.layers[l].params);
    st.layers[l].updated = static_cast<double>(layer_fresh[l]) / n;
    st.layers[l].mean_age = layer_age_sum[l] / n;
  }
  st.fragments = static_cast<int64_t>(ages.size());
  if (ages.empty()) return st;
  st.param_mean = param_sum / static_cast<double>(params);
  double sum = 0;
  for (int64_t age : ages) {
    sum += static_cast<double>(age);
    const size_t b = static_cast<size_t>(age_bin(age));
    if (st.histogram.size() <= b) st.histogram.resize(b + 1, 0);
    ++st.histogram[b];
  }
  st.mean = sum / static_cast<double>(ages.size());
  // Nearest rank: the smallest age with at least q of the fragments at or below it. Ages are
  // at most step + 1, so counting them beats sorting a million of them (element granularity).
  st.max = *std::max_element(ages.begin(), ages.end());
  std::vector<int64_t> count(static_cast<size_t>(st.max) + 1, 0);
  for (int64_t age : ages) ++count[static_cast<size_t>(age)];
  auto quantile = [&](double q) {
    const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * static_cast<double>(ages.size()))));
    int64_t below = 0;
    for (size_t a = 0; a < count.size(); ++a)
      if ((below += count[a]) >= rank) return static_cast<int64_t>(a);
    return st.max;
  };
  st.p50 = quantile(0.5);
  st.p90 = quantile(0.9);
  st.p99 = quantile(0.99);
  return st;
}

void TeacherSmoother::restore(const TeacherState& s) {
  const std::map<std::string, std::string> mine = state_.to_strings(), theirs = s.to_strings();
  for (const auto& [key, value] : mine) {
    if (key == "smoothing.step") continue;
    const std::string& other = theirs.at(key);
    if (other != value)
      throw Error(cat("resume: checkpoint has ", key, " = ", other, ", this run has ", value));
  }
  TS_CHECK(s.step >= 0, "resume: teacher step must be >= 0, found ", s.step);
  state_.step = s.step;
}

}  // namespace tessera
