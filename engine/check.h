// Errors and checks. Two kinds of failure reach a user:
//   UsageError  - a bad flag or value; programs exit with code 2 and name the flag.
//   Error       - anything else at run time (a file, a shape, a device); exit code 1.
// Both carry one line that says what was expected and what was found. What a user reads
// names their file or flag, not ours: TS_CHECK puts the source location (file:line) in front
// only in a DEBUG=1 build or after show_check_locations(true) (the programs' --debug), where
// a check that fires is read as a bug report and the place matters.
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
// Whether TS_CHECK messages start with file:line: (default: only in DEBUG=1 builds).
void show_check_locations(bool on);
bool check_locations_shown();

}  // namespace tessera

// TS_CHECK(cond, pieces...): throws tessera::Error("pieces") when cond is false ("file:line:
// pieces" when check_locations_shown()).
#define TS_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) ::tessera::fail_at(__FILE__, __LINE__, ::tessera::cat(__VA_ARGS__)); \
  } while (0)
