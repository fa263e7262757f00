#include "apps/run/run_directory.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "apps/run/run_lock.h"
#include "engine/check.h"
#include "engine/cpu_kernels.h"
#include "engine/profile.h"

namespace tessera {

void add_run_options(Options& o, RunOptions& r) {
  o.section("Run");
  o.choice("device", &r.device, {"auto", "cpu", "cuda"}, "where to train: a GPU when present (auto), or the one named");
  o.add("seed", &r.seed, "seed of every random stream (init, augmentation, sampler, teacher masks)").min(0);
  o.add("out", &r.out, "run directory to create (refuses one that holds a run); default runs/PROGRAM-TIME");
  o.add("resume", &r.resume, "continue the run in DIR (or from DIR/last.safetensors) exactly where it stopped");
  o.add("save-every", &r.save_every, "steps between checkpoints (one is always written at the end)").min(1);
  o.add("log-every", &r.log_every, "steps between metrics lines and progress updates").min(1);
  o.add("threads", &r.threads, "CPU threads (0: all cores)").min(0).max(1024);
  o.flag("debug", &r.debug, "put the source location (file:line) in front of internal check messages");
  o.choice("on-nonfinite", &r.on_nonfinite, {"stop", "skip"},
           "a step whose loss or a gradient is NaN / inf: stop (exit 1 naming the step and tensor, keeping the "
           "last good checkpoint) or skip (drop that step's update, count it in metrics)");
  o.choice("nonfinite-check", &r.nonfinite_check, {"grads", "ops"},
           "what is checked for NaN / inf on the device: the loss and gradients after backward (grads), or also "
           "every op's output and gradient as the step runs, to name the first op that went non-finite (ops: a "
           "diagnostic, slower; resume from the last checkpoint with it)");
  o.add("profile-steps", &r.profile_steps,
        "A:B times every kernel in steps A..B-1, prints a per-op table and writes DIR/profile.json")
      .check([&r] {
        try {
          profile::StepWindow::parse(r.profile_steps);
          return std::string();
        } catch (const UsageError&) {
          return std::string("A:B with 0 <= A < B");
        }
      });

  // The CPU kernel tier: its own block, it picks an implementation, not the computation.
  r.cpu_kernels = default_cpu_kernels_flag();
  o.choice("cpu-kernels", &r.cpu_kernels, {"reference", "fast"},
           "CPU convolutions and linear gradients: fast (oneDNN, when built with it) or reference (im2col + "
           "OpenBLAS, the readable oracle); default $TESSERA_CPU_KERNELS, else fast");

  // The CUDA backend's numerics and debugging (no effect on the CPU).
  o.choice("math", &r.math, {"pytorch", "fp32", "tf32"},
           "CUDA float math: pytorch = TF32 tensor cores in convolutions, FP32 in GEMMs (PyTorch's defaults); "
           "fp32 = FP32 everywhere; tf32 = TF32 in both");
  o.flag("allow-nondeterministic", &r.allow_nondeterministic,
         "let cuDNN use its fastest convolution algorithm even when it is not deterministic (runs then do not "
         "repeat bit for bit); without it a layer with no deterministic algorithm is an error");
  o.flag("sync-check", &r.sync_check,
         "synchronise and check the GPU after every kernel, naming the op and its sizes when one fails (slow; "
         "debugging; also TESSERA_SYNC_CHECK=1)");
}

CudaOptions cuda_options_of(const RunOptions& r) {
  CudaOptions c;
  c.math = parse_math_mode(r.math);
  c.allow_nondeterministic = r.allow_nondeterministic;
  c.sync_check = r.sync_check;
  return c;
}

std::string apply_cpu_kernels(const RunOptions& r) { return select_cpu_kernels(r.cpu_kernels); }

std::string fixed2(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

void resolve_run_paths(RunOptions& r, const std::string& program) {
  if (!r.out.empty() || !r.resume.empty()) return;
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::gmtime(&now));
  r.out = cat("runs/", program, "-", stamp);
}

bool per_invocation(const std::string& flag) {
  static const char* const kOnce[] = {"config", "out", "resume", "stop-after", "eval-only", "profile-steps", "debug",
                                      "nonfinite-check"};
  for (const char* f : kOnce)
    if (flag == f) return true;
  return false;
}

bool changeable_on_resume(const std::string& flag) {
  static const char* const kFree[] = {"device", "save-every", "log-every", "threads", "cpu-kernels", "on-nonfinite", "knn-every",
                                      "eval-baseline", "eval-train-limit", "probe-epochs", "eval-batch",
                                      "mosaic-steps"};
  for (const char* f : kFree)
    if (flag == f) return true;
  // Debugging a run on the GPU, or letting cuDNN pick faster algorithms, may change between
  // invocations like --device does; --math stays (TF32 changes the arithmetic).
  static const char* const kFreeCuda[] = {"allow-nondeterministic", "sync-check"};
  for (const char* f : kFreeCuda)
    if (flag == f) return true;
  return per_invocation(flag);
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(cat("cannot read '", path, "': ", std::strerror(errno)));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(cat("cannot write '", tmp, "': ", std::strerror(errno)));
  // Any failure leaves `path` as it was and removes the half-written temporary.
  auto fail = [&](const char* what, int error) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(cat(what, " '", tmp, "': ", std::strerror(error)));
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("writing", w < 0 ? errno : EIO);
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) fail("flushing", errno);
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    throw Error(cat("closing '", tmp, "': ", std::strerror(error)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    throw Error(cat("renaming '", tmp, "' to '", path, "': ", std::strerror(error)));
  }
}

// ---- run directory ------------------------------------------------------------------------

RunDirectory RunDirectory::for_new_run(const std::string& dir) {
  TS_CHECK(!dir.empty(), "no run directory");
  RunDirectory r;
  r.dir_ = dir;
  r.checkpoint_ = r.path(kCheckpoint);
  if (path_exists(r.checkpoint_))
    throw Error(cat("'", dir, "' already holds a run; resume it with --resume ", dir,
                    " or choose another --out"));
  if (path_exists(r.path(kConfig)))  // started, failed or killed before its first checkpoint
    throw Error(cat("'", dir, "' already holds a run, one that saved no checkpoint (", kConfig,
                    " without ", kCheckpoint, "): nothing to resume; delete the directory or choose another --out"));
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
    throw Error(cat("--out '", dir, "' exists and is not a directory"));
  return r;
}

RunDirectory RunDirectory::for_resume(const std::string& dir_or_file) {
  struct stat st;
  if (::stat(dir_or_file.c_str(), &st) != 0)
    throw Error(cat("--resume: '", dir_or_file, "' does not exist"));
  RunDirectory r;
  if (S_ISDIR(st.st_mode)) {
    r.dir_ = dir_or_file;
    while (r.dir_.size() > 1 && r.dir_.back() == '/') r.dir_.pop_back();
    r.checkpoint_ = r.path(kCheckpoint);
    if (!path_exists(r.checkpoint_))
      throw Error(cat("--resume: '", dir_or_file, "' holds no ", kCheckpoint));
  } else {
    // Only the run's own checkpoint: a resumed run rewrites its directory's checkpoint and
    // cuts its metrics back to the checkpoint's step, so resuming an older copy (step5.safetensors)
    // would overwrite that copy and erase the later history of the run around it.
    const size_t slash = dir_or_file.find_last_of('/');
    const std::string name = slash == std::string::npos ? dir_or_file : dir_or_file.substr(slash + 1);
    if (name != kCheckpoint)
      throw UsageError(cat("--resume ", dir_or_file, ": expected a run directory or its ", kCheckpoint,
                           ", found another file (resuming writes the run's directory; to continue from this "
                           "checkpoint, copy the run directory and put the file there as ", kCheckpoint, ")"));
    r.checkpoint_ = dir_or_file;
    r.dir_ = slash == std::string::npos ? "." : dir_or_file.substr(0, slash);
  }
  if (::stat(r.checkpoint_.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(cat("--resume: '", r.checkpoint_, "' is not a file"));
  return r;
}

void RunDirectory::create() const {
  std::string partial;
  std::stringstream parts(dir_);
  std::string piece;
  if (!dir_.empty() && dir_[0] == '/') partial = "/";
  while (std::getline(parts, piece, '/')) {
    if (piece.empty()) continue;
    partial += piece;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      throw Error(cat("cannot create '", partial, "': ", std::strerror(errno)));
    partial += "/";
  }
}

void refuse_to_replace(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  if (path.empty()) throw UsageError(cat("--", flag, ": expected a file name, found ''"));
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  for (const std::string& input : inputs) {
    if (fs::equivalent(path, input, ec))
      throw UsageError(cat("--", flag, " ", path, ": that is the input file (", input, "); write to another file"));
    // An input folder (a data set): none of the files under it.
    const fs::path folder = fs::canonical(input, ec), target = fs::canonical(path, ec);
    if (!ec && fs::is_directory(folder, ec)) {
      const auto mismatch = std::mismatch(folder.begin(), folder.end(), target.begin(), target.end());
      if (mismatch.first == folder.end())
        throw UsageError(cat("--", flag, " ", path, ": that is a file of the input ", input, "; write to another file"));
    }
  }
  const fs::path p(path);
  const std::string name = p.filename().string();
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const bool run_file = name == RunDirectory::kCheckpoint || name == "backbone.safetensors" ||
                        name == RunDirectory::kConfig || name == RunDirectory::kMetrics || name == RunLock::kFile ||
                        (name.rfind("mosaic-", 0) == 0 && p.extension() == ".json");
  if (run_file && fs::exists(dir / RunDirectory::kConfig, ec))
    throw UsageError(cat("--", flag, " ", path, ": that is a file of the training run in ", dir.string(),
                         "; write to another file"));
}

void RunDirectory::write_config(const nlohmann::json& config) const {
  write_file_atomic(path(kConfig), config.dump(2) + "\n");
}

// ---- metrics ------------------------------------------------------------------------------

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  if (keep_through_step >= 0 && path_exists(path)) {
    std::istringstream lines(read_file(path));
    std::string line, kept;
    int64_t number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.empty()) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      // Every line is one write(2), cut back when it fails, so a line that is not JSON came from
      // outside (an editor, a damaged disk). Only that line goes: the valid lines after it are
      // still the run's history.
      if (j.is_discarded() || !j.is_object()) {
        std::fprintf(stderr, "warning: %s line %lld is not a JSON object; it is dropped, the other lines are kept\n",
                     path.c_str(), static_cast<long long>(number));
        continue;
      }
      if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > keep_through_step) break;
      if (j.value("event", "") == "final") break;
      kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(cat("cannot open '", path, "' for appending: ", std::strerror(errno)));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

MetricsLog::MetricsLog(MetricsLog&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }

MetricsLog& MetricsLog::operator=(MetricsLog&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

void MetricsLog::write(const std::string& event, nlohmann::json fields) {
  TS_CHECK(fd_ >= 0, "metrics log is not open");
  nlohmann::json line = nlohmann::json::object();
  line["event"] = event;
  for (auto it = fields.begin(); it != fields.end(); ++it) line[it.key()] = it.value();
  const std::string text = line.dump() + "\n";
  // write(2) straight to the file, not through stdio, so the line is out (in the kernel's page
  // cache, where a killed process cannot lose it) when this returns. A disk that fills up in
  // the middle of the line must not leave half of it: cut the file back to where it was.
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd_, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int error = w < 0 ? errno : EIO;
      const bool cut = before >= 0 && ::ftruncate(fd_, before) == 0;
      throw Error(cat("writing '", path_, "': ", std::strerror(error),
                      cut ? "" : " (and the partial line could not be removed)"));
    }
    done += static_cast<size_t>(w);
  }
}

// ---- timing and progress ----------------------------------------------------------------

StepTimer::StepTimer() : window_start_(Clock::now()), data_start_(window_start_) {}

void StepTimer::data_begin() { data_start_ = Clock::now(); }

void StepTimer::data_end() {
  data_seconds_ += std::chrono::duration<double>(Clock::now() - data_start_).count();
}

void StepTimer::step_end(int64_t images) { images_ += images; }

void StepTimer::take(double* images_per_s, double* data_wait_share) {
  const Clock::time_point now = Clock::now();
  const double seconds = std::max(1e-9, std::chrono::duration<double>(now - window_start_).count());
  *images_per_s = static_cast<double>(images_) / seconds;
  *data_wait_share = data_seconds_ / seconds;
  window_start_ = now;
  data_seconds_ = 0;
  images_ = 0;
}

Progress::Progress(int64_t total_steps, int64_t first_step)
    : total_(total_steps), first_(first_step), start_(Clock::now()), tty_(::isatty(STDERR_FILENO) != 0) {}

namespace {
std::string clock_text(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", static_cast<long>(s / 3600), static_cast<long>(s / 60 % 60));
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", static_cast<long>(s / 60), static_cast<long>(s % 60));
  return buf;
}
}  // namespace

void Progress::update(int64_t step, double loss, double images_per_s, double data_wait, const std::string& extra) {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t done = step - first_;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - step) : 0.0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %ld/%ld  loss %.4f  %.0f img/s  data %2.0f%%  ETA %s%s%s",
                static_cast<long>(step), static_cast<long>(total_), loss, images_per_s, 100.0 * data_wait,
                clock_text(eta).c_str(), extra.empty() ? "" : "  ", extra.c_str());
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", buf);
    open_ = true;
  } else {
    std::fprintf(stderr, "%s\n", buf);
  }
  std::fflush(stderr);
}

void Progress::print(const std::string& line) {
  if (open_) std::fputs("\r\033[K", stderr);
  std::fprintf(stderr, "%s\n", line.c_str());
  open_ = false;
}

void Progress::finish() {
  if (open_) std::fputs("\n", stderr);
  open_ = false;
}

// ---- Ctrl-C -----------------------------------------------------------------------------

namespace {
std::atomic<int> g_signals{0};
std::atomic<int> g_last_signal{SIGINT};
// stop_signals_exit: the handler writes this and ends the process (only async-signal-safe calls).
std::atomic<bool> g_exit_at_once{false};
char g_exit_message[1024];
size_t g_exit_message_size = 0;
char g_exit_unlink[4096];  // a file to remove first ("": none)

std::atomic<bool> g_handling{false};  // install_stop_handler was called: a stop, not an end

// The process ends by `sig` as if nothing handled it (its status says so to the shell).
void die_by(int sig) {
  std::signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  std::raise(sig);  // pending while blocked: delivered by the unblock below
  ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
}

// What a SIGINT / SIGTERM does, on the watcher thread or in the handler; async-signal-safe.
extern "C" void on_stop_signal(int sig) {
  g_last_signal.store(sig);
  if (g_exit_at_once.load()) {
    if (g_exit_unlink[0]) ::unlink(g_exit_unlink);
    (void)!::write(STDERR_FILENO, g_exit_message, g_exit_message_size);
    ::_exit(128 + sig);
  }
  if (!g_handling.load() || g_signals.fetch_add(1) >= 1) {  // before the run, or the second: the user means it
    die_by(sig);
    return;
  }
  const char msg[] = "\nstopping after this step: saving a checkpoint (Ctrl-C again to abort)\n";
  (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
}

sigset_t stop_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void take_stop_signals() {
  static pid_t watching = 0;  // the process whose watcher runs (a forked child has none)
  const sigset_t set = stop_signal_set();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  if (watching == ::getpid()) return;
  watching = ::getpid();
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (::sigwait(&set, &sig) == 0) on_stop_signal(sig);
    }
  }).detach();
}

void install_stop_handler() {
  g_handling.store(true);
  // For threads that do not block the signals (made before take_stop_signals, or in a process
  // that never called it, as the tests that run a program's main in their own process).
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_signals.load() > 0; }

void request_stop() { g_signals.fetch_add(1); }

void clear_stop_request() {
  g_exit_at_once.store(false);
  g_signals.store(0);
}

int stop_signals_exit(const std::string& message, const std::string& remove_first) {
  g_exit_message_size = std::min(message.size(), sizeof g_exit_message);
  std::memcpy(g_exit_message, message.data(), g_exit_message_size);
  TS_CHECK(remove_first.size() < sizeof g_exit_unlink, "path too long: ", remove_first);
  std::memcpy(g_exit_unlink, remove_first.c_str(), remove_first.size() + 1);
  g_exit_at_once.store(true);  // before the check: a signal now is either seen below or exits
  if (!stop_requested()) return 0;
  std::fwrite(g_exit_message, 1, g_exit_message_size, stderr);
  return 128 + g_last_signal.load();
}

}  // namespace tessera
