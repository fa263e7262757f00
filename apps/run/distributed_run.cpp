#include "apps/run/distributed_run.h"

#include <cstdio>

#include "apps/run/run_directory.h"
#include "engine/arena.h"
#include "engine/check.h"
#include "engine/optimizer.h"
#include "models/model.h"

namespace tessera {

void add_distributed_options(Options& o, DistributedOptions& d) {
  o.section("processes (mpirun / srun; docs/DISTRIBUTED.md)");
  o.flag("sync-bn", &d.sync_bn,
         "batch norm statistics over the global batch of all ranks (one all-reduce per layer each way); "
         "without it each rank normalises its own shard");
  o.add("collective-timeout", &d.collective_timeout,
        "seconds a collective may wait for the other ranks before the job is ended on all of them")
      .min(0, /*inclusive=*/false);
  o.flag("check-replicas", &d.check_replicas,
         "at every checkpoint, check that every rank's parameters and teacher equal rank 0's bit for bit");
}

bool distributed_changeable_on_resume(const std::string& flag) {
  return flag == "collective-timeout" || flag == "check-replicas";
}

dist::Communicator& start_processes(const char* program, const DistributedOptions& d) {
  dist::set_program_name(program);
  dist::Communicator& c = dist::world();
  c.set_timeout(d.collective_timeout);
  std::fprintf(stderr, "processes: %s\n", c.description().c_str());
  dist::silence_other_ranks(c);
  return c;
}

Device select_rank_device(dist::Communicator& c, const std::string& flag, std::string* note) {
  const Device device = select_device(flag, note);
  if (c.size() > 1) {
    double cuda_ranks = device == Device::CUDA ? 1 : 0;
    c.all_reduce_sum(&cuda_ranks, 1, Device::CPU, "the device check");
    const std::string problem = device_disagreement(static_cast<int>(cuda_ranks), c.size(), device,
                                                    device == Device::CPU ? cuda_unavailable_reason() : "");
    if (!problem.empty()) c.abort(problem, 1);  // every rank ends the job, each with its own side
  }
  if (device == Device::CUDA) c.attach_cuda();
  return device;
}

Device open_rank_device(dist::Communicator& c, const RunOptions& r) {
  std::string note;
  const Device device = select_rank_device(c, r.device, &note);
  std::fprintf(stderr, "%s\n", note.c_str());
  const std::string kernels_note = apply_cpu_kernels(r);
  if (device == Device::CPU) std::fprintf(stderr, "%s\n", kernels_note.c_str());
  return device;
}

std::string device_disagreement(int cuda_ranks, int ranks, Device mine, const std::string& why_not_cuda) {
  if (cuda_ranks == 0 || cuda_ranks == ranks) return "";
  const std::string rule = "every rank must use the same device (give --device cuda or --device cpu)";
  if (mine == Device::CPU)
    return cat("--device auto chose the CPU on this rank (", why_not_cuda.empty() ? "no usable GPU" : why_not_cuda,
               ") but CUDA on ", cuda_ranks, " of the ", ranks, " ranks: ", rule);
  return cat("--device auto chose CUDA on this rank but the CPU on ", ranks - cuda_ranks, " of the ", ranks,
             " ranks (their message says why): ", rule);
}

void check_global_batch(const dist::Communicator& c, const char* flag, int64_t batch) {
  if (batch % c.size() != 0)
    throw UsageError(cat(flag, " ", batch, " is the global batch and must split evenly over the ", c.size(),
                         " ranks: expected a multiple of ", c.size(), ", found ", batch, " (remainder ",
                         batch % c.size(), ")"));
}

bool stop_requested_on_any_rank(dist::Communicator& c) {
  double stop = stop_requested() ? 1.0 : 0.0;
  if (c.size() > 1) c.all_reduce_sum(&stop, 1, Device::CPU, "the stop check");
  return stop > 0;
}

void replicate_from_root(dist::Communicator& c, const NamedArenas& arenas, const NamedTensors& tensors) {
  for (const auto& [name, a] : arenas) dist::broadcast_arena(c, *a, name.c_str());
  if (c.size() == 1) return;
  for (const auto& [name, t] : tensors) c.broadcast(t.ptr, static_cast<int64_t>(t.bytes()), t.device, name.c_str());
}

void check_replicas(dist::Communicator& c, const NamedArenas& arenas, int64_t step, const NamedTensors& tensors) {
  if (c.size() == 1) return;
  for (const auto& [name, a] : arenas) dist::check_replicas(c, *a, name);
  for (const auto& [name, t] : tensors) dist::check_replicas(c, t, name);
  const std::string and_tensors = tensors.empty() ? "" : cat(" and ", tensors.size(), " tensors");
  std::fprintf(stderr, "replicas: %zu arenas%s bit-identical on all %d ranks at step %ld\n", arenas.size(),
               and_tensors.c_str(), c.size(), static_cast<long>(step));
}

void add_model_arenas(NamedArenas& out, const std::string& name, Model& m, bool buffers) {
  out.emplace_back(name + " parameters", &m.params());
  if (buffers) out.emplace_back(name + " BN buffers", &m.buffers());
}

void add_optimizer_arenas(NamedArenas& out, const std::string& name, Optimizer& o) {
  for (const auto& [key, arena] : o.state_arenas()) out.emplace_back(name + " optimizer " + key, arena);
}

}  // namespace tessera
