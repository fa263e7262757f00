// libFuzzer harness: config files (`flag = value` lines, apps/run/options.cpp) read through
// --config into options of every type the programs use.
#include "apps/run/options.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::fresh_dir() + "/run.conf";
  fuzz::write(path, data, size);
  int64_t steps = 10;
  int width = 4;
  double lr = 0.1;
  float p = 0.5f;
  std::string name = "x", mode = "sts";
  bool on = false;
  try {
    tessera::Options o("fuzz", "config-file fuzzing");
    o.add("steps", &steps, "steps").min(1);
    o.add("width", &width, "width").min(1).max(4096);
    o.add("lr", &lr, "learning rate").min(0.0);
    o.add("preserve-prob", &p, "p").min(0.0).max(1.0);
    o.add("name", &name, "a string");
    o.choice("smoothing", &mode, {"none", "tma", "se", "sts"}, "mode");
    o.flag("switch", &on, "a switch");
    const char* argv[] = {"fuzz", "--config", path.c_str()};
    o.parse(3, argv);
  } catch (const std::exception&) {
  }
  return 0;
}
