// The teacher's flags, one struct for byol, moco and fixmatch: --smoothing, --preserve-prob,
// --granularity, --momentum, --momentum-schedule, --bn-buffers, --mosaic-steps. Each program
// gives its own defaults (its method's recipe); byol and moco register the seven flags with
// add_teacher_options in their own words ("teacher", "key encoder"), fixmatch (no schedule
// flag, its own order and bounds) in its add_options; the engine's TeacherConfig is made here.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "apps/run/options.h"
#include "engine/teacher.h"

namespace tessera {

struct TeacherOptions {
  // The defaults that differ between the programs: p, m_0, the momentum schedule, the BN buffers.
  TeacherOptions(float p, float m, std::string schedule, std::string buffers)
      : preserve_prob(p), momentum(m), momentum_schedule(std::move(schedule)), bn_buffers(std::move(buffers)) {}

  std::string smoothing = "sts";
  float preserve_prob;
  std::string granularity = "tensor";
  float momentum;
  std::string momentum_schedule;  // fixmatch has no flag for it: constant
  std::string bn_buffers;
  std::string mosaic_steps;  // step counts that write DIR/mosaic-<step>.json

  // One smoothed part (a backbone, a head) of a run of `total_steps`, its draws from `seed`.
  TeacherConfig config(int64_t total_steps, uint64_t seed) const;
};

// The seven flags, their help naming the smoothed network `who` ("teacher", "key encoder").
// --momentum-schedule lists the default first; `schedule_help` says what the two mean, and
// `smoothing_note` follows the smoothing help (a method's own choice, or "").
void add_teacher_options(Options& o, TeacherOptions& t, const std::string& who, const std::string& smoothing_note,
                         const std::string& schedule_help);

}  // namespace tessera
