#include "engine/check.h"

#include <atomic>

namespace tessera {

namespace {
#if defined(TESSERA_DEBUG) && TESSERA_DEBUG
std::atomic<bool> g_locations{true};
#else
std::atomic<bool> g_locations{false};
#endif
}  // namespace

void show_check_locations(bool on) { g_locations.store(on); }
bool check_locations_shown() { return g_locations.load(); }

void fail_at(const char* file, int line, const std::string& message) {
  if (check_locations_shown()) throw Error(cat(file, ":", line, ": ", message));
  throw Error(message);
}

}  // namespace tessera
