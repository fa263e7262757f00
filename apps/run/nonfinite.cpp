#include "apps/run/nonfinite.h"

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

void NonfiniteGuard::restore(const SafetensorsFile& checkpoint) {
  if (!checkpoint.metadata().count(kSkippedKey)) return;
  const std::string& v = checkpoint.metadata(kSkippedKey);
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || n < 0)
    throw Error(cat(checkpoint.path(), ": metadata ", kSkippedKey, ": expected a count, found '", v, "'"));
  skipped_before_ = n;
}

int64_t NonfiniteGuard::read(const std::string& last_checkpoint) {
  const kernels::NonfiniteRecord r = monitor_.read();
  if (r.first_step >= 0 && policy_ == OnNonfinite::Stop)
    throw Error(cat("step ", r.first_step, ": ", monitor_.describe(r.first_tensor),
                    " is not finite (NaN or infinity); stopped without saving that step (--on-nonfinite stop); ",
                    last_checkpoint, ". Lower --lr, or drop such steps with --on-nonfinite skip"));
  return skipped_before_ + r.bad_steps;
}

void NonfiniteGuard::before_save(SafetensorsWriter& w, const std::string& last_checkpoint) {
  const int64_t skipped = read(last_checkpoint);
  if (skipping()) w.add_metadata(kSkippedKey, std::to_string(skipped));
}

}  // namespace tessera
