// Placeholder until this benchmark lands; it says so and fails, it does not pretend to run.
#include "apps/common/bench.h"
#include "engine/check.h"

namespace tessera {

int bench_train_step(int, char**) { throw Error("bench: this benchmark is not built yet"); }

}  // namespace tessera
