// Data-parallel training over processes: the communicator a program's ranks share.
//
// Processes are started by MPI (`mpirun -np 8 build/byol ...`, `srun --mpi=pmix ...`); each
// is one rank and takes a shard of the global batch (data/sampler.h). What they exchange:
//
//   gradients        one all_reduce_mean per gradient arena per step, right after backward
//   BN statistics    SyncBN: all_reduce_sum of (sum, sum of squares) per layer forward and of
//                    (sum dy, sum dy * xhat) per layer backward (engine/ops_norm.cpp)
//   start / resume   broadcast of every parameter, buffer and optimizer-state arena from rank 0
//   logging          all_reduce of a few floats (the loss, FixMatch's counts) at log steps
//   MoCo shuffle BN  all_gather of the key views and of the keys per step (apps/moco/step.h)
//
// Transports: MPI's collectives for host buffers, NCCL's for device buffers (one GPU per
// local rank; the NCCL communicator is bootstrapped by broadcasting its unique id over MPI).
// Nothing is home-made. A build without MPI, or a program not started by a launcher, is one
// process: every collective is then a no-op on its own data (all_gather a copy).
//
// Failure: no collective waits forever. Host collectives are MPI's non-blocking ones
// (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier) polled with MPI_Test until a
// deadline (set_timeout, --collective-timeout); NCCL's gradient all-reduces, all-gathers and
// broadcasts are waited for likewise, polling cudaStreamQuery and ncclCommGetAsyncError
// (SyncBN's NCCL all-reduces are not waited for one by one: they run on the same stream
// before the step's gradient all-reduce, whose wait covers them). Past the deadline, or on
// any error a rank reports (abort()), the job ends on every rank through MPI_Abort with that
// rank's message.
// A rank killed outright (kill -9) is noticed by the launcher (mpirun, srun), which ends the
// others; the deadline covers what a launcher cannot see (a rank stopped or stuck).
#pragma once

#include <cstdint>
#include <string>

#include "engine/device.h"

namespace tessera {
class Arena;
struct Tensor;
}

namespace tessera::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // among the ranks of this machine: its GPU
  bool root() const { return rank_ == 0; }
  // What carries the collectives, for the programs' first line: "one process (...)" or
  // "4 ranks over MPI (Open MPI v4.1.2), NCCL for device buffers".
  virtual std::string description() const = 0;

  // data (count) on `device`, in place: the mean over ranks (gradients). `what` names the
  // buffer in a timeout message.
  virtual void all_reduce_mean(float* data, int64_t count, Device device, const char* what) = 0;
  // data (count) on `device`, in place: the sum over ranks (statistics, counts).
  virtual void all_reduce_sum(double* data, int64_t count, Device device, const char* what) = 0;
  // send (count) on `device` -> recv (size() * count) on `device`: every rank's `count` floats
  // concatenated in rank order, on every rank (rank r's at recv + r * count). recv must not
  // overlap send unless send == recv + rank() * count (in place). One process: a copy.
  virtual void all_gather(const float* send, float* recv, int64_t count, Device device, const char* what) = 0;
  // data (bytes) on `device`: rank `root`'s bytes on every rank.
  virtual void broadcast(void* data, int64_t bytes, Device device, const char* what, int root = 0) = 0;
  virtual void barrier(const char* what) = 0;
  // Ends the job on every rank: prints "program: rank R of N: message" on this rank's stderr
  // (also when other ranks' output is silenced) and exits with `exit_code` everywhere.
  [[noreturn]] virtual void abort(const std::string& message, int exit_code) = 0;
  // Device buffers (CUDA): the NCCL communicator, created by every rank together; call after
  // the device is chosen (init_cuda picks the local rank's GPU). No-op for one process.
  virtual void attach_cuda() {}

  // Seconds a collective may take before the job is ended (default 600).
  void set_timeout(double seconds) { timeout_s_ = seconds; }

 protected:
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  double timeout_s_ = 600;
};

// The processes of this job. The first call initialises MPI when the program was started by a
// launcher (mpirun, srun: OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE, ... in the environment)
// and the build has MPI; otherwise it is one process. A launcher that started more than one
// process for a build without MPI is an Error (each would train alone on the same directory).
Communicator& world();
// world() if a call has initialised it, else null (error paths: they must not start MPI).
Communicator* started_world();
// Whether this build has MPI (TESSERA_MPI).
bool built_with_mpi();

// Ranks other than 0 print nothing from here on (stdout and stderr go to /dev/null); abort()
// still reaches the terminal. The programs call it once the first line is printed.
void silence_other_ranks(const Communicator& c);
// The program name abort() prefixes its message with ("byol").
void set_program_name(const std::string& program);

// Arena-wide operations: one collective over the whole allocation (alignment gaps included).
void broadcast_arena(Communicator& c, Arena& a, const char* what);
void all_reduce_mean_arena(Communicator& c, Arena& a, const char* what);
// An Error on every rank when some rank's copy of `a` differs from rank 0's in any bit, naming
// the ranks, the first slot that differs and how many values do. Every rank must call it.
void check_replicas(Communicator& c, const Arena& a, const std::string& what);
// The same for a tensor that is not in an arena (MoCo's queue and its pointer): the first
// element (flat index) that differs.
void check_replicas(Communicator& c, const Tensor& t, const std::string& what);

}  // namespace tessera::dist
