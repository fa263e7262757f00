#include "apps/run/nonfinite.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "engine/check.h"

namespace tessera {

OnNonfinite parse_on_nonfinite(const std::string& s) {
  if (s == "stop") return OnNonfinite::Stop;
  if (s == "skip") return OnNonfinite::Skip;
  throw UsageError(cat("--on-nonfinite: expected stop|skip, found '", s, "'"));
}

NonfiniteGuard::NonfiniteGuard(const std::string& policy, Device device)
    : policy_(parse_on_nonfinite(policy)), monitor_(device) {}

void NonfiniteGuard::arm_test_hook() {
  const char* hook = std::getenv("TESSERA_INJECT_NONFINITE");
  if (!hook || !*hook) return;
  std::stringstream items(hook);
  for (std::string item; std::getline(items, item, ',');) {
    const size_t colon = item.find(':');
    char* end = nullptr;
    const long long step = std::strtoll(item.c_str(), &end, 10);
    if (colon == std::string::npos || end != item.c_str() + colon || step < 0)
      throw Error(cat("$TESSERA_INJECT_NONFINITE: expected STEP:TENSOR, found '", item, "'"));
    monitor_.poison_at(step, item.substr(colon + 1));
  }
}

void NonfiniteGuard::skip_teacher(TeacherSmoother& teacher) {
  if (!skipping()) return;
  const NonfiniteMonitor* m = &monitor_;
  teacher.skip_when(monitor_.skip_flag(), [m] { return m->bad_steps(); });
}

void NonfiniteGuard::restore(const SafetensorsFile& checkpoint) {
  auto count = [&](const std::string& v, const char* key) {
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 0)
      throw Error(cat(checkpoint.path(), ": metadata ", key, ": expected a count, found '", v, "'"));
    return static_cast<int64_t>(n);
  };
  if (checkpoint.metadata().count(kSkippedKey)) skipped_before_ = count(checkpoint.metadata(kSkippedKey), kSkippedKey);
  if (checkpoint.metadata().count(kSkippedStepsKey)) {
    std::vector<int64_t> steps;
    std::stringstream items(checkpoint.metadata(kSkippedStepsKey));
    for (std::string item; std::getline(items, item, ',');) steps.push_back(count(item, kSkippedStepsKey));
    monitor_.restore_bad_steps(std::move(steps));
  }
}

int64_t NonfiniteGuard::read(const std::string& last_checkpoint) {
  const kernels::NonfiniteRecord r = monitor_.read();
  if (r.first_step >= 0 && policy_ == OnNonfinite::Stop) {
    const std::string first_op =
        !monitor_.checking_ops() ? "; to name the first op that went non-finite, resume from the last checkpoint with "
                                   "--nonfinite-check ops"
        : r.first_op >= 0        ? cat("; the first op that went non-finite: ", monitor_.describe_op(r.first_op))
                                 : "; no op's output or gradient was non-finite before it";
    throw Error(cat("step ", r.first_step, ": ", monitor_.describe(r.first_tensor),
                    " is not finite (NaN or infinity)", first_op,
                    "; stopped without saving that step (--on-nonfinite stop); ", last_checkpoint,
                    ". Lower --lr, or drop such steps with --on-nonfinite skip"));
  }
  if (skipping() && !warned_lost_ && monitor_.bad_steps_lost() > 0) {
    std::fprintf(stderr, "warning: more than %d steps were skipped between two metrics lines; the teacher's ages "
                 "count %lld of them as updates (lower --log-every)\n", kernels::kNonfiniteRing,
                 static_cast<long long>(monitor_.bad_steps_lost()));
    warned_lost_ = true;
  }
  return skipped_before_ + r.bad_steps;
}

void NonfiniteGuard::before_save(SafetensorsWriter& w, const std::string& last_checkpoint) {
  const int64_t skipped = read(last_checkpoint);
  if (!skipping()) return;
  w.add_metadata(kSkippedKey, std::to_string(skipped));
  std::string steps;
  for (int64_t s : monitor_.bad_steps()) steps += cat(steps.empty() ? "" : ",", s);
  if (!steps.empty()) w.add_metadata(kSkippedStepsKey, steps);
}

}  // namespace tessera
