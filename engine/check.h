// Errors and checks. Two kinds of failure reach a user:
//   UsageError  - a bad flag or value; programs exit with code 2 and name the flag.
//   Error       - anything else at run time (a file, a shape, a device); exit code 1.
// Both carry one line that says what was expected and what was found. TS_CHECK adds the
// source location, because a check that fires is a bug report and the place matters.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace tessera {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Builds a message from any streamable pieces: cat("expected ", a, ", found ", b).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void fail_at(const char* file, int line, const std::string& message);

}  // namespace tessera

// TS_CHECK(cond, pieces...): throws tessera::Error("file:line: pieces") when cond is false.
#define TS_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) ::tessera::fail_at(__FILE__, __LINE__, ::tessera::cat(__VA_ARGS__)); \
  } while (0)
