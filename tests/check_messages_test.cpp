// What a user reads when a check fires (engine/check.h): the message alone, no "file:line:"
// of our source, unless the build is DEBUG=1 or a program was given --debug.
#include <gtest/gtest.h>

#include <string>

#include "engine/check.h"

namespace tessera {
namespace {

std::string message_of_failed_check() {
  try {
    TS_CHECK(1 + 1 == 3, "expected 3, found ", 1 + 1);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(CheckMessages, LocationOnlyWhenDebugging) {
  const bool before = check_locations_shown();
#if defined(TESSERA_DEBUG) && TESSERA_DEBUG
  EXPECT_TRUE(before);  // a DEBUG=1 build shows them by default
#else
  EXPECT_FALSE(before);
#endif
  show_check_locations(false);
  EXPECT_EQ(message_of_failed_check(), "expected 3, found 2");
  show_check_locations(true);  // --debug
  const std::string located = message_of_failed_check();
  EXPECT_EQ(located.find("tests/check_messages_test.cpp:"), 0u) << located;
  EXPECT_NE(located.find(": expected 3, found 2"), std::string::npos) << located;
  show_check_locations(before);
}

}  // namespace
}  // namespace tessera
