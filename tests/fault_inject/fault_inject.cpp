// A test-only shim, loaded with LD_PRELOAD into a program under test, that makes chosen file
// system calls fail the way a full or failing disk does. It wraps the C library's write, fsync,
// rename and read (found with dlsym(RTLD_NEXT)), and is driven by one environment variable:
//
//   TESSERA_FAULT="CALL:KIND:N[+]:SUBSTRING[;...]"
//     CALL       write | fsync | rename | read
//     KIND       ENOSPC | EIO    the call fails with that errno and does nothing
//                partial         (write) the call writes half of its bytes and returns that count;
//                                every later matching write fails with ENOSPC: a disk that filled
//                                up in the middle of a record
//                short           (read) the call returns at most 3 bytes: a legal short read
//     N[+]       the N-th matching call (1-based), or with '+' that call and every later one
//     SUBSTRING  only calls on a file whose path contains it count (for write / fsync / read the
//                path of the descriptor, read from /proc/self/fd; for rename the source path)
//
// Calls the C library makes internally (stdio's buffered writes, for one) do not pass through
// the shim; the engine's durable writes call write/fsync/rename directly, so they do. Each
// injected fault is reported on stderr as "fault_inject: ..." so a test's log says what
// happened. Built by the Makefile as build/libtessera_fault.so, never linked into the engine.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

enum class Call { Write, Fsync, Rename, Read };

struct Rule {
  Call call;
  int error = 0;         // errno to fail with; 0 for partial / short
  bool partial = false;  // write: half, then ENOSPC
  bool short_read = false;
  long nth = 1;
  bool and_later = false;
  std::string substring;
  std::atomic<long> seen{0};
  std::atomic<bool> filled{false};  // a partial write happened: the disk is full from now on
};

std::vector<Rule*>& rules() {
  static std::vector<Rule*> parsed = [] {
    std::vector<Rule*> out;
    const char* spec = std::getenv("TESSERA_FAULT");
    if (!spec) return out;
    std::string all(spec);
    size_t start = 0;
    while (start <= all.size()) {
      const size_t end = all.find(';', start) == std::string::npos ? all.size() : all.find(';', start);
      const std::string item = all.substr(start, end - start);
      start = end + 1;
      if (item.empty()) continue;
      std::vector<std::string> f;
      size_t s = 0;
      for (int k = 0; k < 3; ++k) {
        const size_t c = item.find(':', s);
        if (c == std::string::npos) break;
        f.push_back(item.substr(s, c - s));
        s = c + 1;
      }
      f.push_back(item.substr(s));
      if (f.size() != 4) {
        std::fprintf(stderr, "fault_inject: rule '%s' is not CALL:KIND:N[+]:SUBSTRING\n", item.c_str());
        std::abort();
      }
      Rule* r = new Rule;
      if (f[0] == "write") r->call = Call::Write;
      else if (f[0] == "fsync") r->call = Call::Fsync;
      else if (f[0] == "rename") r->call = Call::Rename;
      else if (f[0] == "read") r->call = Call::Read;
      else {
        std::fprintf(stderr, "fault_inject: unknown call '%s'\n", f[0].c_str());
        std::abort();
      }
      if (f[1] == "ENOSPC") r->error = ENOSPC;
      else if (f[1] == "EIO") r->error = EIO;
      else if (f[1] == "partial" && r->call == Call::Write) r->partial = true;
      else if (f[1] == "short" && r->call == Call::Read) r->short_read = true;
      else {
        std::fprintf(stderr, "fault_inject: kind '%s' does not apply to %s\n", f[1].c_str(), f[0].c_str());
        std::abort();
      }
      r->and_later = !f[2].empty() && f[2].back() == '+';
      r->nth = std::atol(f[2].c_str());
      r->substring = f[3];
      out.push_back(r);
    }
    return out;
  }();
  return parsed;
}

std::string fd_path(int fd) {
  char link[64], target[4096];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

// The rule that fires for this call, if any (every matching rule counts the call).
Rule* firing(Call call, const std::string& path) {
  Rule* fire = nullptr;
  for (Rule* r : rules()) {
    if (r->call != call || path.find(r->substring) == std::string::npos) continue;
    if (r->filled) {
      fire = r;
      continue;
    }
    const long k = ++r->seen;
    if (k == r->nth || (r->and_later && k > r->nth)) fire = r;
  }
  return fire;
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

void report(const char* call, const std::string& path, const char* what) {
  std::fprintf(stderr, "fault_inject: %s on '%s': %s\n", call, path.c_str(), what);
}

}  // namespace

extern "C" ssize_t write(int fd, const void* buf, size_t count) {
  static auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  if (!rules().empty() && fd > 2) {
    const std::string path = fd_path(fd);
    if (Rule* r = firing(Call::Write, path)) {
      if (r->partial && !r->filled.exchange(true) && count > 1) {
        report("write", path, "partial (half the bytes, then the disk is full)");
        return real(fd, buf, count / 2);
      }
      report("write", path, std::strerror(r->error ? r->error : ENOSPC));
      errno = r->error ? r->error : ENOSPC;
      return -1;
    }
  }
  return real(fd, buf, count);
}

extern "C" int fsync(int fd) {
  static auto real = next<int (*)(int)>("fsync");
  if (!rules().empty()) {
    const std::string path = fd_path(fd);
    if (Rule* r = firing(Call::Fsync, path)) {
      report("fsync", path, std::strerror(r->error));
      errno = r->error;
      return -1;
    }
  }
  return real(fd);
}

extern "C" int rename(const char* from, const char* to) {
  static auto real = next<int (*)(const char*, const char*)>("rename");
  if (!rules().empty()) {
    if (Rule* r = firing(Call::Rename, from)) {
      report("rename", from, std::strerror(r->error));
      errno = r->error;
      return -1;
    }
  }
  return real(from, to);
}

extern "C" ssize_t read(int fd, void* buf, size_t count) {
  static auto real = next<ssize_t (*)(int, void*, size_t)>("read");
  if (!rules().empty() && fd > 2) {
    const std::string path = fd_path(fd);
    if (Rule* r = firing(Call::Read, path)) {
      if (r->short_read) return real(fd, buf, count < 3 ? count : 3);
      report("read", path, std::strerror(r->error));
      errno = r->error;
      return -1;
    }
  }
  return real(fd, buf, count);
}
