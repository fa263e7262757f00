// libFuzzer harness: the image-folder reader's decode path (data/read_folder.cpp: stb_image,
// then the centre crop and resize). One input = one image file of a one-class folder.
#include "data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::fresh_dir();
  fuzz::write(dir + "/train/a/image.png", data, size);
  try {
    tessera::data::load_dataset({"folder", dir}, tessera::data::Split::Train, {32, 3});
  } catch (const std::exception&) {
  }
  return 0;
}
