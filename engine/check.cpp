#include "engine/check.h"

namespace tessera {

void fail_at(const char* file, int line, const std::string& message) {
  throw Error(cat(file, ":", line, ": ", message));
}

}  // namespace tessera
