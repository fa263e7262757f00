// TEMPORARY (models-ckpt branch): placeholders for the ops the models call that are being
// written on other branches (conv2d, batch_norm, pooling: engine/ops_conv.cpp and
// engine/ops_norm.cpp; linear and add: engine/ops_basic.cpp). They let the models, the
// checkpoint code and build/init link and run (init never runs a forward); a forward pass
// fails loudly here. Delete each placeholder as soon as its real op is merged (a duplicate
// symbol at link time says which).
#include "engine/check.h"
#include "engine/ops.h"

namespace tessera::ops {

namespace {
[[noreturn]] void pending(const char* op) {
  throw Error(cat("op '", op, "' is not in this build yet (placeholder in engine/ops_pending.cpp)"));
}
}  // namespace

Var* linear(Graph&, Var*, Var*, Var*) { pending("linear"); }
Var* add(Graph&, Var*, Var*) { pending("add"); }
Var* batch_norm1d(Graph&, Var*, Var*, Var*, const BatchNormBuffers&, const BatchNormOptions&) { pending("batch_norm1d"); }
Var* batch_norm2d(Graph&, Var*, Var*, Var*, const BatchNormBuffers&, const BatchNormOptions&) { pending("batch_norm2d"); }
Var* conv2d(Graph&, Var*, Var*, Var*, int, int) { pending("conv2d"); }
Var* max_pool2d(Graph&, Var*, int, int, int) { pending("max_pool2d"); }
Var* global_avg_pool(Graph&, Var*) { pending("global_avg_pool"); }

}  // namespace tessera::ops
