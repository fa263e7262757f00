#include "apps/run/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "engine/check.h"

namespace tessera {

namespace {

std::string read_all(int fd) {
  std::string text;
  char buf[256];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
    at += n;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

std::string this_process() {
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  return cat("pid ", ::getpid(), " on host ", host);
}

RunLock RunLock::acquire(const std::string& dir, std::string* stale) {
  const std::string path = dir + "/" + kFile;
  if (stale) stale->clear();
  // A holder that exits unlinks the file while still holding it; a process that opened the
  // old file just before may then lock an unlinked inode. So lock, then check the path still
  // names the inode locked, and start over when it does not.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(cat(path, ": cannot create the run's lock file: ", std::strerror(errno)));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = read_all(fd);
      ::close(fd);
      if (err == EWOULDBLOCK)
        throw Error(cat("'", dir, "' is in use by another run (", holder.empty() ? "a process starting up" : holder,
                        ", ", path, "): two processes must not write one run directory; wait for it to end, "
                        "stop it, or choose another --out"));
      throw Error(cat(path, ": cannot lock the run directory: ", std::strerror(err)));
    }
    struct stat by_fd, by_path;
    if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_path) != 0 || by_fd.st_ino != by_path.st_ino ||
        by_fd.st_dev != by_path.st_dev) {
      ::close(fd);  // the holder removed it meanwhile: take the new file
      continue;
    }
    // Ours. Text left in it is a holder that died without removing it (kill -9, a crash).
    const std::string left = read_all(fd);
    if (stale) *stale = left;
    const std::string me = this_process() + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
      const int err = errno;
      ::close(fd);
      throw Error(cat(path, ": cannot write the run's lock file: ", std::strerror(err)));
    }
    RunLock lock;
    lock.fd_ = fd;
    lock.path_ = path;
    return lock;
  }
  throw Error(cat(path, ": the lock file kept being replaced; is another run starting and stopping in '", dir, "'?"));
}

void RunLock::release() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // before unlocking: whoever locks the old file next sees it is gone
  ::close(fd_);
  fd_ = -1;
}

RunLock::~RunLock() { release(); }

RunLock::RunLock(RunLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)) {}

RunLock& RunLock::operator=(RunLock&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
  }
  return *this;
}

}  // namespace tessera
