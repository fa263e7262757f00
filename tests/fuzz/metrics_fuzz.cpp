// libFuzzer harness: metrics.jsonl as a resumed run reads it (apps/run/run_directory.cpp
// MetricsLog: lines after the resume step, or after a cut line, are dropped).
#include "apps/run/run_directory.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::fresh_dir() + "/metrics.jsonl";
  fuzz::write(path, data, size);
  try {
    tessera::MetricsLog log(path, size > 0 ? data[0] % 8 : 0);
  } catch (const std::exception&) {
  }
  return 0;
}
