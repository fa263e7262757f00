// libFuzzer harness: the CIFAR-10 / CIFAR-100 binary batch reader (data/read_cifar.cpp). The
// first byte picks the variant; the rest is the test batch, with an optional names file.
#include "data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool hundred = data[0] & 1;
  const std::string dir = fuzz::fresh_dir();
  const fuzz::TwoParts p = fuzz::split(data + 1, size - 1);
  const std::string inner = dir + (hundred ? "/cifar-100-binary" : "/cifar-10-batches-bin");
  fuzz::write(inner + (hundred ? "/test.bin" : "/test_batch.bin"), p.b, p.b_size);
  if (p.a_size > 0) fuzz::write(inner + (hundred ? "/fine_label_names.txt" : "/batches.meta.txt"), p.a, p.a_size);
  try {
    tessera::data::load_dataset({hundred ? "cifar100" : "cifar10", dir}, tessera::data::Split::Test);
  } catch (const std::exception&) {
  }
  return 0;
}
