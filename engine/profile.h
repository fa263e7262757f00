// Kernel-level profiling in the engine's own vocabulary.
//
// Every kernel call goes through TS_DISPATCH (engine/dispatch.h), which calls
// profile::dispatch below. Two things can listen there:
//
//   NVTX      when an NVTX tool is injected (nsys, ncu: they set NVTX_INJECTION64_PATH),
//             every kernel call is an NVTX range named `kernel/layer`
//             ("conv2d_forward/layer2.0.conv1"), nested in the phase ranges of a step
//             ("student_forward", "backward", ...) and a "step" range. CUDA builds only; a
//             CPU-only build compiles NVTX away.
//   Profiler  inside a window of steps (--profile-steps A:B) every kernel call is timed:
//             CUDA events on the engine's stream on the GPU, resolved once when the window
//             closes; a steady host clock on the CPU. Calls are aggregated by
//             (phase, kernel, layer) and printed as a table with share of the step time and,
//             where the kernel declares its cost (kernels/common/cost.h), GB/s and TFLOP/s.
//
//   Census    with TESSERA_KERNEL_CENSUS=DIR in the environment, every kernel call is counted
//             by (device, kernel), and the counts are written at exit to DIR/kernels-PID.tsv
//             (device, kernel, calls per line). gpu-check sets it for the suite and the twins:
//             which kernels the tests ran on CUDA, and which only on the CPU.
//
// With none listening a dispatch costs one relaxed atomic load and a branch: no clock,
// no event, no string, no synchronisation. tests/profile_test.cpp counts this.
//
// Names. The layer label is thread-local: a LayerScope sets it (model code around a layer,
// ops from the weight's name, Graph::backward from the tape node), and every dispatch inside
// takes it. A PhaseScope names the part of the step. Labels are `const char*` that must stay
// valid until the window closes (string literals, names in a ParamTable).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/common/cost.h"

namespace tessera::profile {

namespace detail {
enum : unsigned { kNvtx = 1u, kTiming = 2u, kCensus = 4u };
extern std::atomic<unsigned> g_hooks;  // which listeners are on; 0 = the fast path
}  // namespace detail

// One kernel call, or device work that is not a kernel dispatch (a memset, a copy), while
// something listens: an NVTX range, and inside a window two timing marks and the cost. With
// nothing listening the constructor is one atomic load.
class KernelScope {
 public:
  KernelScope(const char* kernel, Device device) : device_(device) {
    if (detail::g_hooks.load(std::memory_order_relaxed) != 0) start(kernel);
  }
  ~KernelScope() {
    if (active_) finish();
  }
  KernelScope(const KernelScope&) = delete;
  KernelScope& operator=(const KernelScope&) = delete;

  bool timed() const { return record_ >= 0; }
  // The work was issued (ran, on the CPU): takes the end mark, which the destructor takes
  // otherwise. The dispatch calls it before computing the cost, so that is not timed.
  void stop() {
    if (active_ && !stopped_) take_stop_mark();
  }
  void set_cost(const kernels::Cost& c);

 private:
  void start(const char* kernel);
  void take_stop_mark();
  void finish();
  Device device_;
  bool active_ = false;  // something listened when the scope opened
  bool nvtx_ = false;
  bool stopped_ = false;
  int64_t record_ = -1;  // index in the open window's records, -1 when not timed
};

// The body of TS_DISPATCH: `cpu` and `cuda` call the kernel of that backend with `args`.
// Arguments are taken by value (kernels take pointers and sizes), so a constexpr local passed
// from inside a lambda needs no capture, as with a direct call.
template <uint64_t Id, class Cpu, class Cuda, class... Args>
inline void dispatch(Device device, const char* kernel, Cpu cpu, Cuda cuda, Args... args) {
  if (detail::g_hooks.load(std::memory_order_relaxed) == 0) {
    if (device == Device::CUDA) cuda(args...);
    else cpu(args...);
    return;
  }
  KernelScope scope(kernel, device);
  if (device == Device::CUDA) cuda(args...);
  else cpu(args...);
  scope.stop();
  if constexpr (kernels::KernelCost<Id>::known) {
    if (scope.timed()) scope.set_cost(kernels::KernelCost<Id>::of(args...));
  }
}

// TS_DISPATCH_COST: the caller knows the cost better than the kernel's arguments do (an
// arena-wide kernel given device-side tables). `cost` is called only inside a window.
template <class Cost, class Cpu, class Cuda, class... Args>
inline void dispatch_with_cost(Device device, const char* kernel, Cost cost, Cpu cpu, Cuda cuda, Args... args) {
  if (detail::g_hooks.load(std::memory_order_relaxed) == 0) {
    if (device == Device::CUDA) cuda(args...);
    else cpu(args...);
    return;
  }
  KernelScope scope(kernel, device);
  if (device == Device::CUDA) cuda(args...);
  else cpu(args...);
  scope.stop();
  if (scope.timed()) scope.set_cost(cost());
}

// The layer label of this thread ("" when none).
const char* current_layer();

// RAII: dispatches in this scope are labelled `layer` (restored on exit). Cheap enough for
// every op. A model labels a block ("layer1.0": its relu and add kernels get that name); an
// op with a weight refines it with the weight's name (`LayerScope(w->name, kRefine)`:
// "layer1.0.conv1.weight" inside "layer1.0", or anywhere when no label is set) but keeps a
// label it does not extend ("head" stays "head"). A trailing ".weight" is dropped when names
// are shown ("layer1.0.conv1").
class LayerScope {
 public:
  enum Mode { kOverride, kRefine };
  explicit LayerScope(const char* layer, Mode mode = kOverride);
  ~LayerScope();
  LayerScope(const LayerScope&) = delete;
  LayerScope& operator=(const LayerScope&) = delete;

 private:
  const char* saved_;
};

// RAII: one phase of a training step, by the names of the method:
// "data", "student_forward", "teacher_forward", "loss", "backward", "optimizer",
// "teacher_update". An NVTX range when a tool listens; timed inside a window.
class PhaseScope {
 public:
  explicit PhaseScope(const char* phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  const char* saved_;
  int64_t record_ = -1;
  bool nvtx_ = false;
};

// A step's phases one after another, for a training loop written top to bottom:
//   phases.enter("data"); ... phases.enter("student_forward"); ... phases.leave();
// Each enter() closes the phase before it; the destructor closes the last.
class PhaseSequence {
 public:
  void enter(const char* phase) {
    current_.reset();
    current_.emplace(phase);
  }
  void leave() { current_.reset(); }

 private:
  std::optional<PhaseScope> current_;
};

// Steps [first, last) of a run, as the program counts them. Parsed from "A:B".
struct StepWindow {
  int64_t first = -1;
  int64_t last = -1;
  bool enabled() const { return first >= 0; }
  bool contains(int64_t step) const { return enabled() && step >= first && step < last; }
  // "" -> disabled; "A:B" with 0 <= A < B -> [A, B); anything else is a UsageError naming
  // `flag` (e.g. "--profile-steps").
  static StepWindow parse(const std::string& text, const std::string& flag = "--profile-steps");
};

// What a closed window measured.
struct Report {
  struct Row {
    std::string phase, kernel, layer;
    Device device = Device::CPU;
    int64_t calls = 0;
    double total_ms = 0;
    double bytes = 0, flops = 0;  // summed over calls; 0 when the kernel declares no cost
    double share = 0;             // of the summed step time
  };
  struct Phase {
    std::string name;
    double total_ms = 0;
    double share = 0;
  };
  Device device = Device::CPU;
  StepWindow window;
  int64_t steps = 0;
  double step_ms = 0;         // summed over the window's steps: the table's 100%
  double kernel_ms = 0;       // summed over the rows timed on `device`
  double outside_ms = 0;      // step_ms - kernel_ms: host work / gaps between kernels
  int64_t untimed_calls = 0;  // dispatches from other threads during the window (not timed)
  std::vector<Row> rows;      // sorted by total_ms, largest first
  std::vector<Phase> phases;  // in order of first appearance

  std::string table() const;  // the human table
  std::string json() const;   // profile.json
};

// Opens a window at begin_step(first) and closes it after end_step(last - 1): then the
// marks are resolved (one device synchronisation), the table printed to stdout and
// profile.json written to `run_dir` (when not empty). On CUDA the window is also bracketed
// by cudaProfilerStart / cudaProfilerStop, for nsys --capture-range=cudaProfilerApi and
// ncu --profile-from-start off. One Profiler is active at a time.
//
// Steps outside the window and code between steps are never timed. begin_step / end_step
// also push / pop an NVTX "step" range when a tool listens, with or without a window.
class Profiler {
 public:
  Profiler(StepWindow window, Device device, std::string run_dir = "", bool print = true);
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  void begin_step(int64_t step);
  void end_step(int64_t step);
  // Closes a window the run ended inside of (prints and writes what it measured). The
  // destructor calls it; call it yourself to see errors as exceptions.
  void finish();

  bool window_done() const { return report_ != nullptr; }
  const Report* report() const { return report_.get(); }

 private:
  void close_window();
  StepWindow window_;
  Device device_;
  std::string run_dir_;
  bool print_;
  bool open_ = false;
  bool step_nvtx_ = false;
  std::unique_ptr<Report> report_;
};

// Counters for tests: how often the timing hooks ran (each mark: a clock read or an event
// record) since the process started.
int64_t timing_hook_calls();

}  // namespace tessera::profile
