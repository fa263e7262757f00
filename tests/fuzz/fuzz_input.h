// What every fuzz harness here shares: the parsers under test read files, so each input is
// written to files in a private folder first, and the parser's own errors (tessera::Error,
// UsageError: the one-line messages users see) are the expected outcome for bad input. Only
// what the sanitizers and libFuzzer catch is a finding: a crash, an ASan or UBSan report, a
// leak, a hang (-timeout) or an allocation over the limit (-malloc_limit_mb).
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace fuzz {

// A folder of this process's own, emptied for every input.
inline std::string fresh_dir() {
  static const std::string root = "/tmp/tessera-fuzz-" + std::to_string(::getpid());
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  return root;
}

inline void write(const std::string& path, const uint8_t* data, size_t size) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Splits one input in two at a cut read from its first two bytes (little-endian), so one
// corpus file can drive a parser that reads two files (IDX images + labels, STL-10 X + y).
struct TwoParts {
  const uint8_t* a;
  size_t a_size;
  const uint8_t* b;
  size_t b_size;
};
inline TwoParts split(const uint8_t* data, size_t size) {
  if (size < 2) return {data, 0, data, 0};
  size_t cut = size_t{data[0]} | (size_t{data[1]} << 8);
  data += 2;
  size -= 2;
  if (cut > size) cut = size;
  return {data, cut, data + cut, size - cut};
}

}  // namespace fuzz
