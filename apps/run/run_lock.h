// DIR/run.lock: at most one training process per run directory.
//
// Two processes given the same --out or --resume directory would interleave their
// checkpoints and metrics lines. The first one to take the lock holds it for its whole life;
// a second one is refused with the holder's pid and host. The lock is an flock(2) on the
// file, which the kernel releases when the holder dies, however it dies: a lock left by a
// process killed with kill -9 is stale, and the next run takes it over (and says whose it
// was). The file's text (pid, host) is for people and messages; the flock decides.
// Limits: flock is advisory and local to one machine's kernel (on NFS it depends on the
// mount); two hosts sharing a directory over NFS are not guaranteed to see each other.
#pragma once

#include <string>

namespace tessera {

class RunLock {
 public:
  static constexpr const char* kFile = "run.lock";

  RunLock() = default;
  ~RunLock();
  RunLock(RunLock&& o) noexcept;
  RunLock& operator=(RunLock&& o) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  // Takes DIR/run.lock (DIR must exist) and writes this process's pid and host into it. An
  // Error when another live process holds it, naming the directory, the holder's pid and
  // host. `stale` (when not null) receives the holder a stale lock named ("pid 123 on host
  // h"), empty when there was none.
  static RunLock acquire(const std::string& dir, std::string* stale = nullptr);

  bool held() const { return fd_ >= 0; }
  // Removes the file and drops the lock (also done by the destructor).
  void release();

 private:
  int fd_ = -1;
  std::string path_;
};

// "pid 123 on host h", this process's own description as it is written into the lock.
std::string this_process();

}  // namespace tessera
