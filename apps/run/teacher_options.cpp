#include "apps/run/teacher_options.h"

#include "apps/run/teacher_log.h"

namespace tessera {

TeacherConfig TeacherOptions::config(int64_t total_steps, uint64_t seed) const {
  TeacherConfig t;
  t.mode = parse_smoothing_mode(smoothing);
  t.granularity = parse_granularity(granularity);
  t.preserve_prob = preserve_prob;
  t.momentum = momentum;
  t.schedule = parse_momentum_schedule(momentum_schedule);
  t.total_steps = total_steps;
  t.bn_buffers = parse_bn_buffer_policy(bn_buffers);
  t.seed = seed;
  return t;
}

void add_teacher_options(Options& o, TeacherOptions& t, const std::string& who, const std::string& smoothing_note,
                         const std::string& schedule_help) {
  o.choice("smoothing", &t.smoothing, {"none", "tma", "se", "sts"}, who + " smoothing" + smoothing_note);
  o.add("preserve-prob", &t.preserve_prob, "p: probability a fragment keeps its " + who + " value (se, sts)")
      .min(0)
      .max(1);
  o.choice("granularity", &t.granularity, {"tensor", "channel", "element"},
           "fragment: one draw per tensor, channel or element");
  o.add("momentum", &t.momentum, "m_0 of the " + who + " update (tma, sts)").min(0).max(1);
  const std::string other = t.momentum_schedule == "constant" ? "cosine" : "constant";
  o.choice("momentum-schedule", &t.momentum_schedule, {t.momentum_schedule, other}, schedule_help);
  o.choice("bn-buffers", &t.bn_buffers, {"own", "copy", "ema"}, who + " BN statistics: its own, copied, or smoothed");
  o.add("mosaic-steps", &t.mosaic_steps,
        "write every " + who + " fragment's age to DIR/mosaic-<step>.json at these step counts (1,800,1600)")
      .check([&t] { return mosaic_steps_problem(t.mosaic_steps); });
}

}  // namespace tessera
