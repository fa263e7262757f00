#include "engine/cpu_kernels.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "engine/check.h"
#if TESSERA_ONEDNN
#include "kernels/onednn/onednn.h"
#endif

namespace tessera {
namespace {

constexpr const char* kEnv = "TESSERA_CPU_KERNELS";
constexpr const char* kNoOneDnn =
    "this build has no oneDNN: install libdnnl-dev (make deps) and rebuild, the Makefile finds it";

CpuKernels parse(const std::string& text, const std::string& where) {
  if (text == "reference") return CpuKernels::Reference;
  if (text == "fast") return CpuKernels::Fast;
  throw UsageError(cat(where, ": expected reference or fast, found '", text, "'"));
}

// The tier, set once from the environment on first use. An atomic so that a read on a loader
// thread (none today) would be safe; the value changes only when a program or test sets it.
std::atomic<int> g_tier{-1};
std::once_flag g_from_env;

}  // namespace

bool onednn_built() { return TESSERA_ONEDNN != 0; }

std::string onednn_description() {
#if TESSERA_ONEDNN
  return kernels::onednn::runtime_description();
#else
  return kNoOneDnn;
#endif
}

CpuKernels resolve_cpu_kernels(CpuKernels requested, bool have_onednn, std::string* note) {
  if (requested == CpuKernels::Fast && !have_onednn) {
    if (note) *note = cat("cpu kernels: reference (asked for fast, but ", kNoOneDnn, ")");
    return CpuKernels::Reference;
  }
  if (note) {
    if (requested == CpuKernels::Fast) *note = cat("cpu kernels: fast (", onednn_description(), ")");
    else *note = "cpu kernels: reference (im2col + OpenBLAS)";
  }
  return requested;
}

CpuKernels set_cpu_kernels(CpuKernels k) {
  std::call_once(g_from_env, [] {});  // a later first read must not overwrite this choice
  const CpuKernels tier = resolve_cpu_kernels(k, onednn_built(), nullptr);
  g_tier.store(static_cast<int>(tier));
  return tier;
}

CpuKernels cpu_kernels() {
  std::call_once(g_from_env, [] {
    const char* env = std::getenv(kEnv);
    const CpuKernels k = env && *env ? parse(env, kEnv) : CpuKernels::Fast;
    g_tier.store(static_cast<int>(resolve_cpu_kernels(k, onednn_built(), nullptr)));
  });
  return static_cast<CpuKernels>(g_tier.load());
}

const char* cpu_kernels_name(CpuKernels k) { return k == CpuKernels::Fast ? "fast" : "reference"; }

std::string default_cpu_kernels_flag() {
  const char* env = std::getenv(kEnv);
  if (!env || !*env) return "fast";
  parse(env, kEnv);  // a bad value is a UsageError naming the variable
  return env;
}

std::string select_cpu_kernels(const std::string& flag) {
  const CpuKernels requested = parse(flag, "--cpu-kernels");
  std::string note;
  set_cpu_kernels(resolve_cpu_kernels(requested, onednn_built(), &note));
  return note;
}

}  // namespace tessera
