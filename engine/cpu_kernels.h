// Which of the CPU's two kernel tiers the ops run (ARCHITECTURE.md, "Devices"):
//
//   reference  kernels/cpu: im2col + OpenBLAS, OpenMP. The readable version and the oracle
//              every other implementation is tested against.
//   fast       kernels/onednn where a kernel family has one (convolution, the linear layer's
//              gradients), the reference elsewhere. Exists only in builds with oneDNN (make
//              ONEDNN=1, the default when /usr/include/oneapi/dnnl/dnnl.hpp is found).
//
// The choice is process-wide, like the device: programs take `--cpu-kernels reference|fast`
// (default: $TESSERA_CPU_KERNELS, else fast); tests and tools that take no flag read
// TESSERA_CPU_KERNELS once. Asking for fast in a build without oneDNN runs the reference and
// says so (select_cpu_kernels' note); it is not an error, so configs and scripts work on
// both builds. The profiler names the fast tier's kernels apart ("conv2d_forward_onednn"),
// so a --profile-steps table shows which tier ran.
#pragma once

#include <string>

namespace tessera {

enum class CpuKernels { Reference, Fast };

bool onednn_built();  // compiled with the oneDNN fast tier (TESSERA_ONEDNN=1)
// "oneDNN 2.6.3 (cpu runtime OpenMP, isa avx2, ...)" or why there is no fast tier.
std::string onednn_description();

// The tier ops run now. First call: from TESSERA_CPU_KERNELS ("reference" | "fast"; unset:
// fast), falling back to reference without oneDNN; an unknown value is an Error naming it.
CpuKernels cpu_kernels();
const char* cpu_kernels_name(CpuKernels k);  // "reference" | "fast"
// Sets the tier; Fast without oneDNN sets Reference. Returns the tier that runs.
CpuKernels set_cpu_kernels(CpuKernels k);

// Parses "reference" | "fast" (UsageError otherwise), sets the tier and returns the line a
// program prints: "cpu kernels: fast (oneDNN 2.6.3 ...)" or "cpu kernels: reference (asked for
// fast, but this build has no oneDNN: ...)".
std::string select_cpu_kernels(const std::string& flag);
// The flag's default: $TESSERA_CPU_KERNELS when set, else "fast".
std::string default_cpu_kernels_flag();

// Sets the tier for a scope and restores the one before (tests comparing the tiers, tools).
class CpuKernelsScope {
 public:
  explicit CpuKernelsScope(CpuKernels k) : saved_(cpu_kernels()) { set_cpu_kernels(k); }
  ~CpuKernelsScope() { set_cpu_kernels(saved_); }
  CpuKernelsScope(const CpuKernelsScope&) = delete;
  CpuKernelsScope& operator=(const CpuKernelsScope&) = delete;

 private:
  CpuKernels saved_;
};

// The answer select_cpu_kernels gives for `requested` when oneDNN is (or is not) built: the
// tier and the note. Separate so tests can check the no-oneDNN answer in any build.
CpuKernels resolve_cpu_kernels(CpuKernels requested, bool have_onednn, std::string* note);

}  // namespace tessera
