// libFuzzer harness: the STL-10 binary reader (data/read_stl10.cpp): test_X.bin + test_y.bin.
#include "data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::fresh_dir();
  const fuzz::TwoParts p = fuzz::split(data, size);
  fuzz::write(dir + "/stl10_binary/test_X.bin", p.a, p.a_size);
  fuzz::write(dir + "/stl10_binary/test_y.bin", p.b, p.b_size);
  try {
    tessera::data::load_dataset({"stl10", dir}, tessera::data::Split::Test);
  } catch (const std::exception&) {
  }
  return 0;
}
