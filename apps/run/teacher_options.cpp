#include "apps/run/teacher_options.h"

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

}  // namespace tessera
