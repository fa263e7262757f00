// What the whole-step twins (tests/twins_test.cpp) need to compare two training runs of one
// program that should agree: the same run on two backends, or on one backend with two BLAS
// kernels.
//
//   masks   which teacher fragments a step kept and which it updated, recovered on the host
//           from the checkpoints before and after the step (no hook in the program needed),
//           and checked against the Philox rule of ARCHITECTURE.md
//   drift   how far one checkpoint's tensors are from another's, per group (teacher and
//           student parameters, BN statistics, optimizer state), and which tensor is worst;
//           integer tensors (num_batches_tracked, the loader position) and metadata must match
//
// Built on tests/teacher_replay.h (fragment ids, the blend, Philox) and independent of the
// engine's teacher code.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/run_directory.h"
#include "engine/checkpoint.h"
#include "kernels/common/philox.h"
#include "models/model.h"
#include "tests/teacher_replay.h"

namespace tessera::twins {

// ---- teacher masks ---------------------------------------------------------------------------

// One smoothed part of a program's teacher, as its checkpoint lays it out.
struct SmoothedPart {
  std::string name;            // for messages: "backbone"
  std::string teacher_prefix;  // the teacher's tensors (and its model spec) in the checkpoint
  std::string student_prefix;  // the student's tensors it is smoothed towards
  std::string meta_prefix;     // the smoother's metadata: "<meta_prefix>seed", ...
};

// What one step did to a fragment, as the checkpoints show it:
//   Updated  some element of it changed (a kept fragment is never written)
//   Kept     nothing changed although the blend would have changed some element
//   Unknown  nothing changed and the blend would not have either: no evidence
enum class Fate : uint8_t { Unknown, Kept, Updated };

struct Mask {
  std::vector<Fate> fate;      // by fragment id
  std::vector<int64_t> numel;  // parameters in each fragment (0: no fragment has that id)
};

// The smoother's configuration as the checkpoint records it.
struct SmootherMeta {
  uint64_t seed = 0;
  float preserve_prob = 0, momentum = 0;
  bool cosine = false;
  int64_t total_steps = 0;
  replay::Fragments fragments = replay::Fragments::Tensor;

  float momentum_at(int64_t step) const {
    return cosine ? replay::cosine_momentum(momentum, step, total_steps) : momentum;
  }
  bool rule_keeps(int64_t step, uint64_t fragment) const {
    return kernels::philox_uniform(seed, kernels::kStreamTeacher, static_cast<uint64_t>(step), fragment) <
           preserve_prob;
  }
};

inline SmootherMeta smoother_meta(const SafetensorsFile& f, const SmoothedPart& part) {
  SmootherMeta s;
  const std::string& p = part.meta_prefix;
  s.seed = std::stoull(f.metadata(p + "seed"));
  s.preserve_prob = std::stof(f.metadata(p + "preserve_prob"));
  s.momentum = std::stof(f.metadata(p + "momentum"));
  s.cosine = f.metadata(p + "momentum_schedule") == "cosine";
  s.total_steps = std::stoll(f.metadata(p + "total_steps"));
  const std::string g = f.metadata(p + "granularity");
  s.fragments = g == "tensor" ? replay::Fragments::Tensor
                : g == "channel" ? replay::Fragments::Channel
                                 : replay::Fragments::Element;
  return s;
}

// The part's parameter table (registration order and arena offsets define the fragment ids).
inline std::unique_ptr<Model> part_model(const SafetensorsFile& f, const SmoothedPart& part) {
  return make_model(model_spec_from(f, part.teacher_prefix), Device::CPU, false);
}

// The fates of one step's fragments from the teacher in `before` and `after`, and the student
// the step blended towards (`student`: `before` where the teacher moves first, as in BYOL;
// `after` where it moves after the optimizer step, as in FixMatch), with momentum `m`.
inline Mask recover_mask(const ParamTable& table, replay::Fragments g, const SafetensorsFile& before,
                         const SafetensorsFile& after, const SafetensorsFile& student, const SmoothedPart& part,
                         float m) {
  const std::vector<std::vector<uint64_t>> ids = replay::fragment_ids(table, g);
  uint64_t count = 0;  // ids are dense for tensor and channel fragments, arena indices for element ones
  for (const std::vector<uint64_t>& slot : ids)
    for (uint64_t f : slot) count = std::max(count, f + 1);
  std::vector<uint8_t> changed(count, 0), telling(count, 0);
  Mask mask;
  mask.numel.assign(count, 0);
  for (size_t k = 0; k < table.size(); ++k) {
    const std::string& name = table[k].name;
    const std::vector<float> tb = before.f32(part.teacher_prefix + name), ta = after.f32(part.teacher_prefix + name),
                             s = student.f32(part.student_prefix + name);
    for (size_t e = 0; e < tb.size(); ++e) {
      const uint64_t f = ids[k][e];
      ++mask.numel[f];
      changed[f] |= !replay::same_bits(tb[e], ta[e]);
      telling[f] |= !replay::same_bits(replay::blend(tb[e], s[e], m), tb[e]);
    }
  }
  mask.fate.assign(count, Fate::Unknown);
  for (uint64_t f = 0; f < count; ++f)
    if (mask.numel[f] > 0) mask.fate[f] = changed[f] ? Fate::Updated : telling[f] ? Fate::Kept : Fate::Unknown;
  return mask;
}

struct MaskCheck {
  int64_t kept = 0, updated = 0, unknown = 0;  // fragments
  int64_t params = 0, params_updated = 0, params_unknown = 0;
  int64_t against_rule = 0;  // determined fragments whose fate the Philox rule contradicts
  std::string first;         // the first of them, described
};

// `mask` against the rule of step `step`.
inline MaskCheck check_mask(const Mask& mask, const SmootherMeta& meta, int64_t step, const std::string& what) {
  MaskCheck c;
  for (uint64_t f = 0; f < mask.fate.size(); ++f) {
    const int64_t n = mask.numel[f];
    if (n == 0) continue;
    const Fate fate = mask.fate[f];
    c.params += n;
    if (fate == Fate::Unknown) {
      ++c.unknown;
      c.params_unknown += n;
      continue;
    }
    const bool kept = fate == Fate::Kept;
    ++(kept ? c.kept : c.updated);
    if (!kept) c.params_updated += n;
    if (kept != meta.rule_keeps(step, f) && c.against_rule++ == 0)
      c.first = what + ": fragment " + std::to_string(f) + " was " + (kept ? "kept" : "updated") +
                " at step index " + std::to_string(step) + ", the Philox rule says " + (kept ? "update" : "keep");
  }
  return c;
}

// Fragments one mask shows kept and the other updated (Unknown on either side is no evidence).
inline int64_t contradictions(const Mask& a, const Mask& b, std::string* first) {
  int64_t n = 0;
  for (uint64_t f = 0; f < a.fate.size(); ++f) {
    const Fate fa = a.fate[f], fb = f < b.fate.size() ? b.fate[f] : Fate::Unknown;
    if (fa == Fate::Unknown || fb == Fate::Unknown || fa == fb) continue;
    if (n++ == 0 && first)
      *first = "fragment " + std::to_string(f) + " was " + (fa == Fate::Kept ? "kept" : "updated") + " on one side, " +
               (fb == Fate::Kept ? "kept" : "updated") + " on the other";
  }
  return n;
}

// ---- drift between checkpoints -------------------------------------------------------------

enum Group { kTeacher, kStudent, kBnStats, kOptimizer, kGroups };
inline const char* group_name(int g) {
  static const char* const names[] = {"teacher params", "student params", "BN statistics", "optimizer state"};
  return names[g];
}
// Checkpoint names: "optim." optimizer state, "*running_*" BN statistics, "student." the
// student's parameters, the rest (unprefixed, "teacher.") the teacher's.
inline int group_of(const std::string& name) {
  if (name.rfind("optim.", 0) == 0) return kOptimizer;
  if (name.find("running_") != std::string::npos) return kBnStats;
  if (name.rfind("student.", 0) == 0) return kStudent;
  return kTeacher;
}

struct Worst {
  double value = 0;
  std::string where = "-";
  void take(double v, const std::string& w) {
    if (std::isnan(value)) return;  // a NaN, once seen, stays the worst
    if (std::isnan(v) || v > value) {
      value = v;
      where = w;
    }
  }
};

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// How far `got` is from `want`:
//   group[g]   the largest per-tensor drift in group g, max |got - want| / scale, where a tensor's
//              scale is its own largest |want| but at least 1% of its group's largest: a tensor of
//              rounding noise (the gradient of a bias a BatchNorm follows) is measured against
//              the group, not against itself
//   exact      integer tensors, the tensor set, and every metadata entry but run.config must match
//              bit for bit; mismatches counted, the first described
struct StateDrift {
  Worst group[kGroups];
  int64_t mismatches = 0;
  std::string first_mismatch;
  void mismatch(const std::string& what) {
    if (mismatches++ == 0) first_mismatch = what;
  }
};

inline StateDrift state_drift(const SafetensorsFile& want, const SafetensorsFile& got) {
  StateDrift d;
  double group_max[kGroups] = {0, 0, 0, 0};
  for (const auto& [name, e] : want.tensors())
    if (e.dtype == StDType::F32) {
      double& gm = group_max[group_of(name)];
      gm = std::max(gm, max_abs(want.f32(name)));
    }
  for (const auto& [name, e] : want.tensors()) {
    if (!got.has(name) || got.entry(name).dtype != e.dtype || got.entry(name).shape != e.shape) {
      d.mismatch(name + ": missing, or of another dtype or shape");
      continue;
    }
    switch (e.dtype) {
      case StDType::F32: {
        const std::vector<float> w = want.f32(name), g = got.f32(name);
        const double scale = std::max({max_abs(w), 0.01 * group_max[group_of(name)], 1e-30});
        double worst = 0;
        for (size_t i = 0; i < w.size() && !std::isnan(worst); ++i)
          worst = std::max(worst, std::fabs(static_cast<double>(g[i]) - static_cast<double>(w[i])), [](double a, double b) {
            return !std::isnan(a) && (std::isnan(b) || a < b);  // NaN is the largest
          });
        d.group[group_of(name)].take(worst / scale, name);
        break;
      }
      case StDType::I64:
        if (want.i64(name) != got.i64(name)) d.mismatch(name + " (int64) differs");
        break;
      case StDType::I32:
        if (want.i32(name) != got.i32(name)) d.mismatch(name + " (int32) differs");
        break;
      case StDType::U8:
        if (want.u8(name) != got.u8(name)) d.mismatch(name + " (uint8) differs");
        break;
    }
  }
  if (got.tensors().size() != want.tensors().size()) d.mismatch("the files hold different numbers of tensors");
  for (const auto& [key, value] : want.metadata()) {
    if (key == "run.config") continue;
    if (!got.metadata().count(key)) {
      d.mismatch("metadata '" + key + "' missing");
    } else if (got.metadata(key) != value) {
      d.mismatch("metadata '" + key + "' is '" + got.metadata(key) + "', not '" + value + "'");
    }
  }
  if (got.metadata().size() != want.metadata().size()) d.mismatch("the files hold different metadata keys");
  return d;
}

// The configuration a checkpoint records, without the flags that may differ between runs of
// one computation: those of one invocation, and where it ran (device, threads).
inline nlohmann::json computation_config(const SafetensorsFile& f) {
  nlohmann::json c = nlohmann::json::parse(f.metadata("run.config"));
  for (auto it = c.begin(); it != c.end();) {
    const std::string& k = it.key();
    it = per_invocation(k) || k == "device" || k == "threads" ? c.erase(it) : std::next(it);
  }
  return c;
}

// A loss's drift: relative, with a floor for losses near 0 (an unlabeled loss with every
// pseudo-label masked out is exactly 0 on both sides).
inline double loss_drift(double want, double got) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-3);
}

inline std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", v);
  return buf;
}

}  // namespace tessera::twins
