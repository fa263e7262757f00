// The teacher's mosaic in a run's logs, shared by byol, fixmatch and moco (docs/EXPERIMENTS.md):
//
//   "teacher" metrics event, at every logging step: the age of every fragment (steps since its
//       last update, engine/teacher.h) summarised - mean, parameter-weighted mean, quantiles,
//       log2 histogram - and per layer the fraction updated at that step and the mean age
//   DIR/mosaic-<step>.json, at the steps of --mosaic-steps: every fragment's age, slot by slot
//       (apps/tools/plot.py draws it as the mosaic picture)
//
// Both come from TeacherSmoother::ages_at: host-side, from the kernel's own draws, no device
// readback; O(fragments / (1 - p)) Philox draws per call.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/run/run_directory.h"
#include "engine/teacher.h"

namespace tessera {

// One smoother of a program, its slot names prefixed in the logs (BYOL: "" for the backbone,
// "projector." for the projector).
struct TeacherPart {
  std::string prefix;
  const TeacherSmoother* smoother;
};

// The ages after the update of step `step` (0-based, as ages_at), all parts together.
std::vector<SlotAges> teacher_ages(const std::vector<TeacherPart>& parts, int64_t step);

// The fields of the "teacher" event (without "step", which the caller adds).
nlohmann::json teacher_event_fields(const std::vector<SlotAges>& ages);

// The mosaic file's content: mode, granularity, p, and per slot its shape and the ages of its
// fragments (element granularity: the mean age of each output channel's elements, so the file
// stays small). `steps_done` is the step count the metrics use (step + 1).
nlohmann::json mosaic_json(const std::vector<TeacherPart>& parts, const std::vector<SlotAges>& ages,
                           int64_t steps_done);

// A training loop's call after each step, `step` steps done: at a logging step (`log_step`) or
// one of `mosaic_steps`, the "teacher" event; at the latter also DIR/mosaic-<step>.json when
// `write_files` (rank 0). Before the train line, which stays the last line of a step.
void log_teacher(const std::vector<TeacherPart>& parts, const std::vector<int64_t>& mosaic_steps, int64_t step,
                 bool log_step, MetricsLog& metrics, const RunDirectory& dir, bool write_files);

// --mosaic-steps "100,800,1600": step counts, ascending or not; empty gives none. Returns ""
// when `text` is fine, else what was expected (for Options::check).
std::string mosaic_steps_problem(const std::string& text);
std::vector<int64_t> parse_mosaic_steps(const std::string& text);

}  // namespace tessera
