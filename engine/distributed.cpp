// The communicators of engine/distributed.h: one process, and MPI (+ NCCL for device buffers).
#include "engine/distributed.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "engine/arena.h"
#include "engine/check.h"
#include "engine/tensor.h"

#if TESSERA_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only (the C++ bindings are deprecated)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif
#if TESSERA_NCCL
#include <nccl.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera::dist {

namespace {

std::string& program_name() {
  static std::string name = "tessera";
  return name;
}
// stderr as it was before silence_other_ranks(): where abort() writes.
int& error_fd() {
  static int fd = 2;
  return fd;
}

void write_error_line(const Communicator& c, const std::string& message) {
  const std::string line = c.size() > 1 ? cat(program_name(), ": rank ", c.rank(), " of ", c.size(), ": ", message, "\n")
                                        : cat(program_name(), ": ", message, "\n");
  std::fflush(stdout);
  std::fflush(stderr);
  const ssize_t written = ::write(error_fd(), line.data(), line.size());
  (void)written;  // nowhere left to report a failed write
}

// The launcher's variables, set when mpirun (OpenMPI), srun (PMIx, PMI-2) or another MPI's
// hydra started this process: the number of processes, -1 when a launcher is there but does not
// say how many (srun --mpi=pmix sets PMIX_RANK alone), 0 without one. SLURM_NTASKS is not
// one of them: a batch script's plain `build/byol` sees it too.
int launcher_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
    if (const char* s = std::getenv(v)) return std::atoi(s);
  }
  return std::getenv("PMIX_RANK") ? -1 : 0;
}

// ---- one process -------------------------------------------------------------------------

class Single final : public Communicator {
 public:
  explicit Single(std::string why) : why_(std::move(why)) {}
  std::string description() const override { return cat("1 process (", why_, ")"); }
  void all_reduce_mean(float*, int64_t, Device, const char*) override {}
  void all_reduce_sum(double*, int64_t, Device, const char*) override {}
  void all_gather(const float* send, float* recv, int64_t count, Device device, const char*) override {
    if (send == recv) return;
    copy(Tensor(recv, Shape{count}, DType::F32, device), Tensor(const_cast<float*>(send), Shape{count}, DType::F32, device));
  }
  void broadcast(void*, int64_t, Device, const char*, int) override {}
  void barrier(const char*) override {}
  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    write_error_line(*this, message);
    std::_Exit(exit_code);
  }

 private:
  std::string why_;
};

#if TESSERA_MPI
// ---- MPI (+ NCCL) ------------------------------------------------------------------------

class Mpi final : public Communicator {
 public:
  Mpi() {
    int provided = 0;
    // Only the training thread calls MPI (the loader's thread never does).
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      throw Error("MPI_Init_thread failed: is this process started by mpirun / srun with a matching MPI?");
    // The main thread alone calls MPI, but OpenMP and the loader run threads beside it.
    if (provided < MPI_THREAD_FUNNELED)
      throw Error(cat("MPI_Init_thread: expected thread support MPI_THREAD_FUNNELED (", int(MPI_THREAD_FUNNELED),
                      ") or more, found ", provided));
    // Errors come back as codes (checked below), so a failure ends the job with a message.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    library_ = std::string(version, static_cast<size_t>(len));
    library_ = library_.substr(0, library_.find_first_of(",\n"));
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }

  std::string description() const override {
    return cat(size_, size_ == 1 ? " rank" : " ranks", " over MPI (", library_, ")",
               TESSERA_NCCL ? ", NCCL for device buffers" : "", ", collective timeout ", timeout_s_, " s");
  }

  void all_reduce_mean(float* data, int64_t count, Device device, const char* what) override {
    if (device == Device::CUDA) return device_all_reduce(data, count, /*mean=*/true, what);
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(count, what), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r), what);
    wait(r, what);
    const float inv = 1.0f / static_cast<float>(size_);
    for (int64_t i = 0; i < count; ++i) data[i] *= inv;
  }

  void all_reduce_sum(double* data, int64_t count, Device device, const char* what) override {
    if (device == Device::CUDA) return device_all_reduce(data, count, /*mean=*/false, what);
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(count, what), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r), what);
    wait(r, what);
  }

  void all_gather(const float* send, float* recv, int64_t count, Device device, const char* what) override {
    to_int(count * size_, what);  // the receive buffer's size is an MPI int too
    // In place when the rank's own part already sits at its place in recv (MPI_IN_PLACE, NCCL's
    // sendbuff == recvbuff + rank * count).
    const bool in_place = send == recv + count * rank_;
    if (device == Device::CUDA) return device_all_gather(send, recv, count, what);
    MPI_Request r;
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, to_int(count, what), MPI_FLOAT, recv, to_int(count, what),
                         MPI_FLOAT, MPI_COMM_WORLD, &r),
          what);
    wait(r, what);
  }

  void broadcast(void* data, int64_t bytes, Device device, const char* what, int root) override {
    if (device == Device::CUDA) return device_broadcast(data, bytes, what, root);
    MPI_Request r;
    check(MPI_Ibcast(data, to_int(bytes, what), MPI_BYTE, root, MPI_COMM_WORLD, &r), what);
    wait(r, what);
  }

  void barrier(const char* what) override {
    MPI_Request r;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &r), what);
    wait(r, what);
  }

  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    write_error_line(*this, message);
#if TESSERA_NCCL
    if (nccl_) ncclCommAbort(nccl_);  // frees the GPU's pending collectives
#endif
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; this is for the compiler
  }

  void attach_cuda() override {
    if (size_ == 1) return;  // nothing to exchange
#if TESSERA_NCCL
    if (nccl_) return;
    ncclUniqueId id;
    if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    broadcast(&id, sizeof id, Device::CPU, "the NCCL unique id", 0);
    nccl_check(ncclCommInitRank(&nccl_, size_, id, rank_), "ncclCommInitRank");
#else
    throw Error("this build has MPI but no NCCL: GPU buffers cannot be reduced across ranks; run the ranks on the "
                "CPU (--device cpu) or build where NCCL is found (make cuda-config)");
#endif
  }

 private:
  static int to_int(int64_t n, const char* what) {
    TS_CHECK(n >= 0 && n <= INT32_MAX, what, ": a collective of ", n, " elements is over MPI's int count");
    return static_cast<int>(n);
  }
  void check(int status, const char* what) {
    if (status == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(status, text, &len);
    abort(cat(what, ": MPI error: ", std::string(text, static_cast<size_t>(len))), 1);
  }
  // Polls a non-blocking collective until it completes or the deadline passes. Spins briefly
  // (a step's collectives usually finish in microseconds), then sleeps between polls so a
  // rank waiting for a slow one leaves the cores to it.
  void wait(MPI_Request& r, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (polls > 200) std::this_thread::sleep_for(std::chrono::microseconds(polls > 20000 ? 1000 : 20));
      if (polls % 64 == 0 && seconds_since(start) > timeout_s_) timed_out(what);
    }
  }
  static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }
  [[noreturn]] void timed_out(const char* what) {
    abort(cat(what, ": the collective did not complete within ", timeout_s_,
              " s (--collective-timeout): another rank has failed, stopped or fallen far behind"),
          1);
  }

#if TESSERA_NCCL
  void nccl_check(ncclResult_t s, const char* what) {
    if (s != ncclSuccess && s != ncclInProgress) abort(cat(what, ": NCCL error: ", ncclGetErrorString(s)), 1);
  }
  // Waits for the engine stream (which runs the collective) with the same deadline; an
  // asynchronous NCCL error (a peer gone) ends the job at once.
  void wait_device(const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (int polls = 0;; ++polls) {
      const cudaError_t q = cudaStreamQuery(kernels::cuda::runtime().stream);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) abort(cat(what, ": CUDA error: ", cudaGetErrorString(q)), 1);
      ncclResult_t async = ncclSuccess;
      nccl_check(ncclCommGetAsyncError(nccl_, &async), what);
      nccl_check(async, what);
      if (polls > 200) std::this_thread::sleep_for(std::chrono::microseconds(20));
      if (polls % 64 == 0 && seconds_since(start) > timeout_s_) timed_out(what);
    }
  }
#endif
  template <typename T>
  void device_all_reduce(T* data, int64_t count, bool mean, const char* what) {
#if TESSERA_NCCL
    TS_CHECK(nccl_, what, ": a device buffer reduced before attach_cuda()");
    const ncclDataType_t type = sizeof(T) == 4 ? ncclFloat32 : ncclFloat64;
    nccl_check(ncclAllReduce(data, data, static_cast<size_t>(count), type, mean ? ncclAvg : ncclSum, nccl_,
                             kernels::cuda::runtime().stream),
               what);
    // Gradients: wait here, with the deadline, before the optimizer. SyncBN statistics are
    // consumed by kernels on the same stream: no host wait (the step's gradient wait covers them).
    if (mean) wait_device(what);
#else
    (void)data, (void)count, (void)mean;
    throw Error(cat(what, ": a CUDA buffer, and this build has no NCCL"));
#endif
  }
  void device_all_gather(const float* send, float* recv, int64_t count, const char* what) {
#if TESSERA_NCCL
    TS_CHECK(nccl_, what, ": a device buffer gathered before attach_cuda()");
    nccl_check(ncclAllGather(send, recv, static_cast<size_t>(count), ncclFloat32, nccl_, kernels::cuda::runtime().stream),
               what);
    wait_device(what);
#else
    (void)send, (void)recv, (void)count;
    throw Error(cat(what, ": a CUDA buffer, and this build has no NCCL"));
#endif
  }
  void device_broadcast(void* data, int64_t bytes, const char* what, int root) {
#if TESSERA_NCCL
    TS_CHECK(nccl_, what, ": a device buffer broadcast before attach_cuda()");
    nccl_check(ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, nccl_,
                             kernels::cuda::runtime().stream),
               what);
    wait_device(what);
#else
    (void)data, (void)bytes, (void)root;
    throw Error(cat(what, ": a CUDA buffer, and this build has no NCCL"));
#endif
  }

  std::string library_;
#if TESSERA_NCCL
  ncclComm_t nccl_ = nullptr;
#else
  void* nccl_ = nullptr;
#endif
};
#endif  // TESSERA_MPI

std::unique_ptr<Communicator> make_world() {
  const int launched = launcher_size();
#if TESSERA_MPI
  if (launched != 0) return std::make_unique<Mpi>();
  return std::make_unique<Single>("not started by mpirun / srun");
#else
  if (launched > 1 || launched < 0)
    throw Error(cat("started by an MPI launcher (", launched > 1 ? cat(launched, " processes") : std::string("PMIx"),
                    "), and this build has no MPI (MPI=0): each process would train alone; install libopenmpi-dev ",
                    "(make deps) and rebuild, or run one process"));
  return std::make_unique<Single>("this build has no MPI: make deps, then rebuild");
#endif
}

// Set by world() once it is initialised: error paths look here instead of starting MPI.
Communicator* g_started = nullptr;

}  // namespace

bool built_with_mpi() { return TESSERA_MPI != 0; }

Communicator& world() {
  static std::unique_ptr<Communicator> w = make_world();
  g_started = w.get();
  return *w;
}

Communicator* started_world() { return g_started; }

void set_program_name(const std::string& program) { program_name() = program; }

void silence_other_ranks(const Communicator& c) {
  if (c.root()) return;
  std::fflush(stdout);
  std::fflush(stderr);
  const int keep = ::dup(2);
  const int null = ::open("/dev/null", O_WRONLY);
  if (keep < 0 || null < 0) throw Error(cat("rank ", c.rank(), ": cannot redirect its output to /dev/null: ", std::strerror(errno)));
  error_fd() = keep;
  ::dup2(null, 1);
  ::dup2(null, 2);
  ::close(null);
}

void broadcast_arena(Communicator& c, Arena& a, const char* what) {
  if (c.size() == 1) return;
  c.broadcast(a.data(), a.table().arena_numel() * static_cast<int64_t>(sizeof(float)), a.device(), what);
}

void all_reduce_mean_arena(Communicator& c, Arena& a, const char* what) {
  if (c.size() == 1) return;
  c.all_reduce_mean(a.data(), a.table().arena_numel(), a.device(), what);
}

namespace {

// Compares this rank's bytes with rank 0's, `elem` bytes a value, over the values `counted`
// accepts; throws the same Error on every rank when some rank differs, naming each such rank,
// how many of `total` values differ and, through `where`, the first. Every rank must call it.
template <class Counted, class Where>
void compare_with_root(Communicator& c, const char* mine, size_t bytes, size_t elem, int64_t total,
                       const std::string& what, Counted counted, Where where) {
  std::vector<char> root(mine, mine + bytes);
  c.broadcast(root.data(), static_cast<int64_t>(bytes), Device::CPU, "the replica check");
  // Per rank: how many values differ from rank 0's, and the first that does; summed so every
  // rank sees every rank's answer and throws the same message.
  std::vector<double> report(static_cast<size_t>(2 * c.size()), 0.0);
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < bytes; i += elem) {
    const auto k = static_cast<int64_t>(i / elem);
    if (!counted(k) || std::memcmp(mine + i, root.data() + i, elem) == 0) continue;
    if (first < 0) first = k;
    ++differ;
  }
  report[static_cast<size_t>(2 * c.rank())] = static_cast<double>(differ);
  report[static_cast<size_t>(2 * c.rank() + 1)] = static_cast<double>(first);
  c.all_reduce_sum(report.data(), static_cast<int64_t>(report.size()), Device::CPU, "the replica check");
  std::string message;
  for (int r = 1; r < c.size(); ++r) {
    const auto count = static_cast<int64_t>(report[static_cast<size_t>(2 * r)]);
    if (count == 0) continue;
    message += cat(message.empty() ? "" : "; ", "rank ", r, "'s ", what, " differs from rank 0's in ", count, " of ",
                   total, " values, first ", where(static_cast<int64_t>(report[static_cast<size_t>(2 * r + 1)])));
  }
  if (!message.empty()) throw Error(message);
}

}  // namespace

void check_replicas(Communicator& c, const Arena& a, const std::string& what) {
  if (c.size() == 1) return;
  const size_t bytes = static_cast<size_t>(a.table().arena_numel()) * sizeof(float);
  std::vector<char> mine(bytes);
  copy_to_host(mine.data(), a.all(), bytes);
  const ParamTable& table = a.table();
  compare_with_root(c, mine.data(), bytes, sizeof(float), table.total_numel(), what,
                    [&](int64_t i) { return table.slot_of(i) >= 0; },  // alignment gaps hold nothing
                    [&](int64_t i) { return cat("in '", table[static_cast<size_t>(table.slot_of(i))].name, "'"); });
}

void check_replicas(Communicator& c, const Tensor& t, const std::string& what) {
  if (c.size() == 1) return;
  const size_t bytes = t.bytes();
  std::vector<char> mine(bytes);
  copy_to_host(mine.data(), t, bytes);
  compare_with_root(c, mine.data(), bytes, dtype_size(t.dtype), t.numel(), what, [](int64_t) { return true; },
                    [](int64_t i) { return cat("at flat index ", i); });
}

}  // namespace tessera::dist
