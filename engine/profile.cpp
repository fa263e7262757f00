#include "engine/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <unistd.h>

#include "engine/check.h"
#include "engine/device.h"

#if TESSERA_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera::profile {

namespace {

// NVTX tools announce themselves through this variable (the NVTX injection protocol); it
// is read once, so a run without a tool never builds a range name. TESSERA_NVTX=0|1
// overrides the guess.
unsigned initial_hooks() {
  unsigned hooks = 0;
#if TESSERA_CUDA
  if (const char* force = std::getenv("TESSERA_NVTX")) hooks = force[0] == '1' ? detail::kNvtx : 0u;
  else if (std::getenv("NVTX_INJECTION64_PATH")) hooks = detail::kNvtx;
#endif
  const char* census = std::getenv("TESSERA_KERNEL_CENSUS");
  if (census && *census) hooks |= detail::kCensus;
  return hooks;
}

// The kernel census (TESSERA_KERNEL_CENSUS=DIR): calls per (device, kernel), written when the
// process exits normally (a static's destructor). Kernel names are string literals.
class Census {
 public:
  void count(const char* kernel, Device device) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++calls_[{device == Device::CUDA ? "cuda" : "cpu", kernel}];
  }
  ~Census() {
    const char* dir = std::getenv("TESSERA_KERNEL_CENSUS");
    if (!dir || !*dir || calls_.empty()) return;
    char path[4096];
    std::snprintf(path, sizeof path, "%s/kernels-%ld.tsv", dir, static_cast<long>(::getpid()));
    if (FILE* f = std::fopen(path, "w")) {
      for (const auto& [key, n] : calls_)
        std::fprintf(f, "%s\t%s\t%lld\n", key.first.c_str(), key.second.c_str(), static_cast<long long>(n));
      std::fclose(f);
    }
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, int64_t> calls_;
};

Census& census() {
  static Census c;
  return c;
}

// A point in time: a host clock reading or a CUDA event recorded on the engine's stream.
struct Mark {
  double host_ms = 0;
  int64_t event = -1;
};

struct KernelRecord {
  const char* kernel;
  const char* layer;
  const char* phase;
  Device device;
  int64_t start, stop;
  kernels::Cost cost;
};

struct SpanRecord {  // a phase or a step
  const char* name;
  int64_t start, stop;
};

// Everything an open window has measured, in order; resolved into times at window end.
struct Recorder {
  explicit Recorder(Device d) : device(d) {}
  ~Recorder();

  int64_t mark(Device d);
  double resolve_ms(const Mark& m, float* event_ms) const;

  Device device;
  std::vector<Mark> marks;
  std::vector<KernelRecord> kernels;
  std::vector<SpanRecord> phases;
  std::vector<SpanRecord> steps;
  int depth = 0;  // a kernel range is open (a nested dispatch is not timed twice)
  std::atomic<int64_t> untimed{0};
#if TESSERA_CUDA
  std::vector<cudaEvent_t> events;  // a pool, reused by the next window
  size_t events_used = 0;
#endif
};

std::atomic<int64_t> g_hook_calls{0};
Recorder* g_recorder = nullptr;     // the active Profiler's, while one exists
bool g_profiler_exists = false;
thread_local bool t_owner = false;  // this thread runs the steps of the open window
thread_local const char* t_layer = "";
thread_local const char* t_phase = "";

// "layer1.0.conv1.weight" -> "layer1.0.conv1": ops label kernels with their weight's name.
std::string layer_display_name(const char* layer) {
  std::string s(layer);
  const std::string suffix = ".weight";
  if (s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0)
    s.resize(s.size() - suffix.size());
  return s;
}

double host_now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

Recorder::~Recorder() {
#if TESSERA_CUDA
  for (cudaEvent_t e : events) cudaEventDestroy(e);  // no throw from a destructor
#endif
}

int64_t Recorder::mark(Device d) {
  g_hook_calls.fetch_add(1, std::memory_order_relaxed);
  Mark m;
#if TESSERA_CUDA
  if (d == Device::CUDA) {
    if (events_used == events.size()) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(events[events_used], kernels::cuda::runtime().stream));
    m.event = static_cast<int64_t>(events_used++);
  }
#endif
  if (d == Device::CPU) m.host_ms = host_now_ms();
  marks.push_back(m);
  return static_cast<int64_t>(marks.size()) - 1;
}

// Host marks are absolute; event marks are measured from the window's first event.
double Recorder::resolve_ms(const Mark& m, float* event_ms) const {
  if (m.event < 0) return m.host_ms;
  return event_ms[m.event];
}

#if TESSERA_CUDA
void nvtx_push(const char* name) { nvtxRangePushA(name); }
void nvtx_pop() { nvtxRangePop(); }
#else
void nvtx_push(const char*) {}
void nvtx_pop() {}
#endif

}  // namespace

namespace detail {

std::atomic<unsigned> g_hooks{initial_hooks()};

}  // namespace detail

void KernelScope::start(const char* kernel) {
  active_ = true;
  const unsigned hooks = detail::g_hooks.load(std::memory_order_relaxed);
  if (hooks & detail::kCensus) census().count(kernel, device_);
  if (hooks & detail::kNvtx) {
    char name[192];
    if (t_layer[0]) std::snprintf(name, sizeof name, "%s/%s", kernel, layer_display_name(t_layer).c_str());
    else std::snprintf(name, sizeof name, "%s", kernel);
    nvtx_push(name);
    nvtx_ = true;
  }
  if (!(hooks & detail::kTiming) || g_recorder == nullptr) return;
  Recorder& r = *g_recorder;
  if (!t_owner) {
    r.untimed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (r.depth > 0) return;  // inside another timed range: counted there
  ++r.depth;
  record_ = static_cast<int64_t>(r.kernels.size());
  r.kernels.push_back(KernelRecord{kernel, t_layer, t_phase, device_, -1, -1, {}});
  r.kernels.back().start = r.mark(device_);
}

void KernelScope::take_stop_mark() {
  stopped_ = true;
  if (record_ < 0) return;
  Recorder& r = *g_recorder;
  r.kernels[static_cast<size_t>(record_)].stop = r.mark(device_);
  --r.depth;
}

void KernelScope::set_cost(const kernels::Cost& c) {
  if (record_ >= 0) g_recorder->kernels[static_cast<size_t>(record_)].cost = c;
}

void KernelScope::finish() {
  if (!stopped_) take_stop_mark();  // a scope around work that is not a dispatch ends here
  if (nvtx_) nvtx_pop();
}

const char* current_layer() { return t_layer; }

LayerScope::LayerScope(const char* layer, Mode mode) : saved_(t_layer) {
  if (layer == nullptr) layer = "";
  if (mode == kRefine && t_layer[0] != '\0') {
    const size_t n = std::strlen(t_layer);
    const bool extends = std::strncmp(layer, t_layer, n) == 0 && layer[n] == '.';
    if (!extends) return;
  }
  t_layer = layer;
}

LayerScope::~LayerScope() { t_layer = saved_; }

PhaseScope::PhaseScope(const char* phase) : saved_(t_phase) {
  t_phase = phase;
  const unsigned hooks = detail::g_hooks.load(std::memory_order_relaxed);
  if (hooks == 0) return;
  if (hooks & detail::kNvtx) {
    nvtx_push(phase);
    nvtx_ = true;
  }
  if ((hooks & detail::kTiming) && g_recorder && t_owner) {
    Recorder& r = *g_recorder;
    record_ = static_cast<int64_t>(r.phases.size());
    r.phases.push_back(SpanRecord{phase, -1, -1});
    r.phases.back().start = r.mark(r.device);
  }
}

PhaseScope::~PhaseScope() {
  // The window may have closed inside this phase (end_step in a phase): then the record is
  // gone with it.
  if (record_ >= 0 && g_recorder && (detail::g_hooks.load() & detail::kTiming) &&
      static_cast<size_t>(record_) < g_recorder->phases.size()) {
    g_recorder->phases[static_cast<size_t>(record_)].stop = g_recorder->mark(g_recorder->device);
  }
  if (nvtx_) nvtx_pop();
  t_phase = saved_;
}

StepWindow StepWindow::parse(const std::string& text, const std::string& flag) {
  StepWindow w;
  if (text.empty()) return w;
  const size_t colon = text.find(':');
  const auto bad = [&] {
    return UsageError(cat(flag, ": expected A:B with 0 <= A < B (steps A to B-1), found '", text, "'"));
  };
  if (colon == std::string::npos) throw bad();
  try {
    size_t used_a = 0, used_b = 0;
    const std::string a = text.substr(0, colon), b = text.substr(colon + 1);
    w.first = std::stoll(a, &used_a);
    w.last = std::stoll(b, &used_b);
    if (used_a != a.size() || used_b != b.size()) throw bad();
  } catch (const std::logic_error&) {
    throw bad();
  }
  if (w.first < 0 || w.last <= w.first) throw bad();
  return w;
}

Profiler::Profiler(StepWindow window, Device device, std::string run_dir, bool print)
    : window_(window), device_(device), run_dir_(std::move(run_dir)), print_(print) {
  TS_CHECK(!g_profiler_exists, "only one Profiler may be active at a time");
  g_profiler_exists = true;
  if (window_.enabled()) g_recorder = new Recorder(device_);
}

Profiler::~Profiler() {
  try {
    finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "profile: %s\n", e.what());
  }
  // A step range left open by an exception unwinding past end_step.
  if (step_nvtx_) nvtx_pop();
  delete g_recorder;
  g_recorder = nullptr;
  g_profiler_exists = false;
}

void Profiler::begin_step(int64_t step) {
  if (detail::g_hooks.load(std::memory_order_relaxed) & detail::kNvtx) {
    nvtx_push("step");
    step_nvtx_ = true;
  }
  if (!window_.contains(step) || report_) return;
  Recorder& r = *g_recorder;
  if (!open_) {
    open_ = true;
#if TESSERA_CUDA
    if (device_ == Device::CUDA) CUDA_CHECK(cudaProfilerStart());
#endif
  }
  t_owner = true;
  r.steps.push_back(SpanRecord{"step", -1, -1});
  detail::g_hooks.fetch_or(detail::kTiming);
  r.steps.back().start = r.mark(device_);
}

void Profiler::end_step(int64_t step) {
  if (open_ && g_recorder && !g_recorder->steps.empty() && g_recorder->steps.back().stop < 0) {
    Recorder& r = *g_recorder;
    r.steps.back().stop = r.mark(device_);
    detail::g_hooks.fetch_and(~detail::kTiming);
    t_owner = false;
    if (step + 1 >= window_.last) close_window();
  }
  if (step_nvtx_) {
    nvtx_pop();
    step_nvtx_ = false;
  }
}

void Profiler::finish() {
  if (!open_) {
    // A window the run never reached (it ended, stopped or resumed past it): said, not silent.
    if (window_.enabled() && !report_ && print_)
      std::fprintf(stderr, "profile: --profile-steps %lld:%lld: no step of the window ran; nothing was timed\n",
                   static_cast<long long>(window_.first), static_cast<long long>(window_.last));
    window_ = StepWindow{};  // said once (the destructor calls this again)
    return;
  }
  if (!g_recorder->steps.empty() && g_recorder->steps.back().stop < 0) {
    g_recorder->steps.pop_back();  // a step that never ended is not a measurement
    detail::g_hooks.fetch_and(~detail::kTiming);
    t_owner = false;
  }
  close_window();
}

void Profiler::close_window() {
  open_ = false;
  Recorder& r = *g_recorder;
  // The one synchronisation of the window: every event must have been reached.
  synchronize(device_);
  std::vector<float> event_ms;
#if TESSERA_CUDA
  if (device_ == Device::CUDA) {
    CUDA_CHECK(cudaProfilerStop());
    event_ms.resize(r.events_used, 0.0f);
    for (size_t i = 1; i < r.events_used; ++i)
      CUDA_CHECK(cudaEventElapsedTime(&event_ms[i], r.events[0], r.events[i]));
  }
#endif
  const auto span_ms = [&](int64_t start, int64_t stop) {
    return r.resolve_ms(r.marks[static_cast<size_t>(stop)], event_ms.data()) -
           r.resolve_ms(r.marks[static_cast<size_t>(start)], event_ms.data());
  };

  auto rep = std::make_unique<Report>();
  rep->device = device_;
  rep->window = window_;
  rep->untimed_calls = r.untimed.load();
  for (const SpanRecord& s : r.steps) {
    rep->steps += 1;
    rep->step_ms += span_ms(s.start, s.stop);
  }
  std::map<std::tuple<std::string, std::string, std::string, int>, size_t> row_of;
  for (const KernelRecord& k : r.kernels) {
    if (k.stop < 0) continue;
    const auto key = std::make_tuple(std::string(k.phase), std::string(k.kernel), layer_display_name(k.layer),
                                     static_cast<int>(k.device));
    auto it = row_of.find(key);
    if (it == row_of.end()) {
      it = row_of.emplace(key, rep->rows.size()).first;
      Report::Row row;
      row.phase = k.phase;
      row.kernel = k.kernel;
      row.layer = std::get<2>(key);
      row.device = k.device;
      rep->rows.push_back(row);
    }
    Report::Row& row = rep->rows[it->second];
    const double ms = span_ms(k.start, k.stop);
    row.calls += 1;
    row.total_ms += ms;
    row.bytes += k.cost.bytes;
    row.flops += k.cost.flops;
    if (k.device == device_) rep->kernel_ms += ms;
  }
  std::map<std::string, size_t> phase_of;
  for (const SpanRecord& p : r.phases) {
    if (p.stop < 0) continue;
    auto it = phase_of.find(p.name);
    if (it == phase_of.end()) {
      it = phase_of.emplace(p.name, rep->phases.size()).first;
      rep->phases.push_back(Report::Phase{p.name, 0, 0});
    }
    rep->phases[it->second].total_ms += span_ms(p.start, p.stop);
  }
  rep->outside_ms = rep->step_ms - rep->kernel_ms;
  const double denom = rep->step_ms > 0 ? rep->step_ms : 1.0;
  for (Report::Row& row : rep->rows) row.share = row.total_ms / denom;
  for (Report::Phase& p : rep->phases) p.share = p.total_ms / denom;
  std::stable_sort(rep->rows.begin(), rep->rows.end(),
                   [](const Report::Row& a, const Report::Row& b) { return a.total_ms > b.total_ms; });

  // The pool of events stays for a later window; the records go.
  r.marks.clear();
  r.kernels.clear();
  r.phases.clear();
  r.steps.clear();
#if TESSERA_CUDA
  r.events_used = 0;
#endif
  report_ = std::move(rep);

  if (print_) {
    std::fputs(report_->table().c_str(), stdout);
    std::fflush(stdout);  // whole, before the next stderr line (a stop message) can cut into it
  }
  if (!run_dir_.empty()) {
    const std::string path = run_dir_ + "/profile.json";
    std::ofstream out(path);
    TS_CHECK(out.good(), "profile: cannot write ", path);
    out << report_->json() << "\n";
    TS_CHECK(out.good(), "profile: writing ", path, " failed");
    if (print_) std::printf("profile: wrote %s\n", path.c_str());
  }
}

int64_t timing_hook_calls() { return g_hook_calls.load(); }

}  // namespace tessera::profile
