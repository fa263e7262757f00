// What a test reads of a failed check: the message of the exception a call throws.
#pragma once

#include <exception>
#include <string>

namespace tessera {

// The message of what `f` throws as an E (any std::exception unless asked: tessera::Error,
// UsageError), or "" when `f` returns.
template <class E = std::exception, class F>
std::string thrown(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

inline bool has(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace tessera
