// libFuzzer harness: the MNIST / Fashion-MNIST IDX reader (data/read_idx.cpp), raw and gzip.
// One input = images file + labels file (fuzz::split); a part that starts with the gzip magic
// is written under the .gz name, so inflate is fuzzed too.
#include "data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::fresh_dir();
  const fuzz::TwoParts p = fuzz::split(data, size);
  auto name = [](const uint8_t* d, size_t n, const char* base) {
    const bool gz = n >= 2 && d[0] == 0x1f && d[1] == 0x8b;
    return std::string(base) + (gz ? ".gz" : "");
  };
  fuzz::write(dir + "/" + name(p.a, p.a_size, "train-images-idx3-ubyte"), p.a, p.a_size);
  fuzz::write(dir + "/" + name(p.b, p.b_size, "train-labels-idx1-ubyte"), p.b, p.b_size);
  try {
    tessera::data::load_dataset({"mnist", dir}, tessera::data::Split::Train);
  } catch (const std::exception&) {
  }
  return 0;
}
