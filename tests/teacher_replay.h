// The teacher rule of ARCHITECTURE.md ("Teacher smoothing") written out a second time, on the
// host, for tests that replay what a training program did to its teacher: given the teacher
// and the student a checkpoint holds, the step index and the run's flags, what must the next
// checkpoint's teacher be, bit for bit.
//
// Deliberately independent of engine/teacher.cpp and the kernels: the fragment ids are derived
// here from the tensors' shapes, the cosine schedule is written out, and the keep / blend
// decision is spelled out. Only Philox itself (kernels/common/philox.h, tested against the
// Random123 vectors) and the model's ParamTable (registration order and arena offsets, the
// layout that defines "tensor i" and "element i") are shared with the code under test.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/checkpoint.h"
#include "kernels/common/philox.h"

namespace tessera::replay {

// The one draw per (seed, part) the programs use to give each part of a run (an initialisation,
// a smoother's masks) a seed of its own: two words of Philox(seed, init stream, subsequence
// (program << 40) + part), high word first. Spelled out here rather than exposed by the
// programs; the replay tests pin it (and check it against the seed the checkpoint records).
inline uint64_t program_part_seed(uint64_t seed, uint64_t program, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (program << 40) + part), 0);
  const uint64_t hi = s.next_u32();
  return (hi << 32) | s.next_u32();
}

// BYOL's schedule: m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2, in double, rounded once.
inline float cosine_momentum(float m0, int64_t k, int64_t K) {
  const double kk = static_cast<double>(std::min(std::max<int64_t>(k, 0), K));
  return static_cast<float>(1.0 - (1.0 - static_cast<double>(m0)) * (std::cos(M_PI * kk / static_cast<double>(K)) + 1.0) / 2.0);
}

// teacher' = m teacher + (1 - m) student with the rounding the project specifies (sts_rule.h:
// (1 - m) and its product rounded once each, then one fused multiply-add); m = 0 replaces.
inline float blend(float teacher, float student, float m) {
  return m == 0.0f ? student : std::fmaf(m, teacher, (1.0f - m) * student);
}

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline std::string float_str(float v) {  // every float distinct: %.9g round-trips
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

enum class Fragments { Tensor, Channel, Element };

// Fragment id of every element of every slot of `table`, in slot order:
//   tensor   the slot's index in registration order
//   channel  one id per output channel (shape[0] rows of numel / shape[0] elements), numbered in
//            registration order; a 1-D tensor (bias, BN gamma / beta) takes the ids of the latest
//            multi-dimensional tensor with as many channels, so a conv's channel, its bias and
//            the BN after it share one draw
//   element  the element's index in the arena (slot offset + position; gaps count)
inline std::vector<std::vector<uint64_t>> fragment_ids(const ParamTable& table, Fragments g) {
  std::vector<std::vector<uint64_t>> ids(table.size());
  std::vector<int64_t> base(table.size(), -1);
  int64_t next_channel = 0;
  for (size_t k = 0; k < table.size(); ++k) {
    const Slot& s = table[k];
    const int64_t rows = s.shape[0], row_numel = s.numel / rows;
    if (g == Fragments::Channel) {
      if (s.shape.ndim == 1)
        for (size_t j = k; j-- > 0;)
          if (table[j].shape.ndim > 1 && table[j].shape[0] == rows) {
            base[k] = base[j];
            break;
          }
      if (base[k] < 0) {
        base[k] = next_channel;
        next_channel += rows;
      }
    }
    ids[k].resize(static_cast<size_t>(s.numel));
    for (int64_t e = 0; e < s.numel; ++e)
      ids[k][static_cast<size_t>(e)] = g == Fragments::Tensor    ? k
                                       : g == Fragments::Channel ? static_cast<uint64_t>(base[k] + e / row_numel)
                                                                 : static_cast<uint64_t>(s.offset + e);
  }
  return ids;
}

// One teacher update as the flags define it.
struct Rule {
  uint64_t seed;       // the smoother's own seed (a part seed of the run's --seed)
  int64_t step;        // the step index the update belongs to
  float preserve_prob;  // p
  float momentum;       // m_k
  Fragments fragments;
};

// What a replayed update exercised, so a test can insist that it could have failed: kept
// fragments whose blend would have changed the value, updated ones that did change it.
struct ReplayCounts {
  int64_t kept_fragments = 0, updated_fragments = 0;
  int64_t telling_keeps = 0, telling_updates = 0;  // elements where keep and blend differ
};

// Expected teacher after the update, per tensor name, from the teacher before it (`teacher`,
// names under `teacher_prefix`) and the student it reads (`student`, under `student_prefix`).
inline std::map<std::string, std::vector<float>> replay_update(const ParamTable& table, const SafetensorsFile& teacher,
                                                               const std::string& teacher_prefix,
                                                               const SafetensorsFile& student,
                                                               const std::string& student_prefix, const Rule& rule,
                                                               ReplayCounts* counts) {
  const std::vector<std::vector<uint64_t>> ids = fragment_ids(table, rule.fragments);
  std::map<uint64_t, bool> decided;  // fragment -> kept
  std::map<std::string, std::vector<float>> out;
  for (size_t k = 0; k < table.size(); ++k) {
    const std::string& name = table[k].name;
    std::vector<float> t = teacher.f32(teacher_prefix + name);
    const std::vector<float> s = student.f32(student_prefix + name);
    for (size_t e = 0; e < t.size(); ++e) {
      const uint64_t f = ids[k][e];
      const float u = kernels::philox_uniform(rule.seed, kernels::kStreamTeacher, static_cast<uint64_t>(rule.step), f);
      const bool keep = u < rule.preserve_prob;
      if (decided.emplace(f, keep).second) ++(keep ? counts->kept_fragments : counts->updated_fragments);
      const float b = blend(t[e], s[e], rule.momentum);
      if (!same_bits(b, t[e])) ++(keep ? counts->telling_keeps : counts->telling_updates);
      if (!keep) t[e] = b;
    }
    out[name] = std::move(t);
  }
  return out;
}

// Bit equality of every tensor of `want` with `got` under `prefix`: one failure naming how many
// tensors differ and, for the first few, the first differing element and both values.
inline void expect_same_tensors(const std::map<std::string, std::vector<float>>& want, const SafetensorsFile& got,
                                const std::string& prefix, const std::string& what) {
  std::string report;
  size_t differ = 0;
  for (const auto& [name, w] : want) {
    const std::vector<float> g = got.f32(prefix + name);
    ASSERT_EQ(w.size(), g.size()) << what << ": " << name;
    for (size_t i = 0; i < w.size(); ++i)
      if (!same_bits(w[i], g[i])) {
        if (++differ <= 3)
          report += "\n  " + prefix + name + "[" + std::to_string(i) + "] is " + float_str(g[i]) +
                    ", the replayed rule gives " + float_str(w[i]);
        break;
      }
  }
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << want.size() << " tensors differ from the replay"
                        << report;
}

}  // namespace tessera::replay
