// What a training program does to run as one of several processes (engine/distributed.h,
// docs/DISTRIBUTED.md), written once for byol, fixmatch and moco:
//
//   DistributedOptions d; add_distributed_options(options, d);   // --sync-bn, --collective-timeout, ...
//   ... parse, TrainingRun ...
//   dist::Communicator& comm = start_processes("byol", d);       // the first line; other ranks go quiet
//   check_global_batch(comm, "--batch-size", c.batch_size);      // UsageError unless it splits evenly
//   ... build and load the nets ...
//   replicate_from_root(comm, arenas);                           // rank 0's state on every rank
//
// Rank 0 alone writes the run directory (TrainingRun) and evaluates; every rank trains.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "apps/run/options.h"
#include "engine/distributed.h"
#include "engine/tensor.h"

namespace tessera {

class Arena;
class Model;
class Optimizer;
struct RunOptions;

struct DistributedOptions {
  bool sync_bn = false;             // batch statistics over the global batch
  double collective_timeout = 600;  // seconds before a collective that has not finished ends the job
  bool check_replicas = false;      // at every checkpoint: parameters bit-identical on every rank
};
void add_distributed_options(Options& o, DistributedOptions& d);
// --collective-timeout and --check-replicas change no result: a resumed run may change them.
bool distributed_changeable_on_resume(const std::string& flag);

// Initialises the processes (dist::world()), applies the timeout, prints the program's first
// line ("processes: ...") and silences the other ranks' output.
dist::Communicator& start_processes(const char* program, const DistributedOptions& d);

// The device of every rank: select_device (engine/device.h) on each, then one check that they
// all chose alike, then the NCCL communicator when it is CUDA. `--device auto` on a machine of
// the job whose GPU is unusable would otherwise pick the CPU there while the others wait for
// it in NCCL's set-up: the job ends instead, that rank saying why. `note`: the device line.
Device select_rank_device(dist::Communicator& c, const std::string& flag, std::string* note);
// What every program does first with its device: select_rank_device with --device, its line on
// stderr, and the CPU tier of --cpu-kernels applied (its line printed when the device is the CPU).
Device open_rank_device(dist::Communicator& c, const RunOptions& r);
// That check's message, "" when the ranks agree: `cuda_ranks` of `ranks` chose CUDA; this rank
// chose `mine`, for the reason `why_not_cuda` when it is the CPU.
std::string device_disagreement(int cuda_ranks, int ranks, Device mine, const std::string& why_not_cuda);

// A UsageError unless `batch` (the global batch of `flag`) splits evenly over the ranks.
void check_global_batch(const dist::Communicator& c, const char* flag, int64_t batch);

// The loop's stop check (Ctrl-C, SIGTERM): every rank stops after the same step, so none is
// left waiting in a collective. With several ranks, one all-reduce of one number a step.
bool stop_requested_on_any_rank(dist::Communicator& c);

// Named arenas of a run's state (parameters, buffers, optimizer state, teachers), and state
// held in plain tensors (moco's queue and its pointer).
using NamedArenas = std::vector<std::pair<std::string, Arena*>>;
// out += name's parameters (and BN buffers when `buffers`), or the optimizer's state arenas.
void add_model_arenas(NamedArenas& out, const std::string& name, Model& m, bool buffers);
void add_optimizer_arenas(NamedArenas& out, const std::string& name, Optimizer& o);
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
// Rank 0's values on every rank: at the start and after a resume.
void replicate_from_root(dist::Communicator& c, const NamedArenas& arenas, const NamedTensors& tensors = {});
// --check-replicas: an Error unless every rank's copy equals rank 0's bit for bit; prints one
// line on rank 0 when they do.
void check_replicas(dist::Communicator& c, const NamedArenas& arenas, int64_t step, const NamedTensors& tensors = {});

}  // namespace tessera
