// libFuzzer harness: the safetensors reader (engine/checkpoint.cpp): header length, JSON
// header, dtypes, shapes and data offsets, then every tensor's bytes and the metadata.
#include "engine/checkpoint.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::fresh_dir() + "/model.safetensors";
  fuzz::write(path, data, size);
  try {
    const tessera::SafetensorsFile f = tessera::SafetensorsFile::read(path);
    size_t touched = 0;
    for (const auto& [key, value] : f.metadata()) touched += key.size() + value.size();
    (void)touched;
  } catch (const std::exception&) {
  }
  return 0;
}
