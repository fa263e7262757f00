// Teacher smoothing: TMA (EMA), Spatial Ensemble and Spatial-Temporal Smoothing over a
// student's and a teacher's parameter arenas that share one ParamTable.
//
// At step k every fragment f gets one draw u = Philox(seed, kStreamTeacher, k, f); the teacher
// keeps f when u < p, else teacher = m_k * teacher + (1 - m_k) * student
// (kernels/common/sts_rule.h). One fused kernel launch per arena per step; no mask buffer, no
// host round trip, no allocation. The masks are a pure function of (seed, step), so a resumed
// run draws exactly the masks the uninterrupted run would have drawn.
//
//   mode    p                m                 note
//   none    -                -                 the teacher is never touched
//   tma     0                m_k               EMA of the student
//   se      preserve_prob    0                 updated fragments are replaced by the student's
//   sts     preserve_prob    m_k               both
//   copy    0                0                 every fragment copied, every step
//
// Statistics for the logs (fraction of fragments and of parameters updated at a step, and the
// age of every fragment: the mosaic) are recomputed on the host from the same draws when asked
// for; the device is never queried.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/slot_tables.h"
#include "kernels/common/sts_rule.h"

namespace tessera {

enum class SmoothingMode { None, Tma, Se, Sts, Copy };
enum class MomentumSchedule { Constant, Cosine };
enum class BnBufferPolicy { Own, Copy, Ema };
using kernels::Granularity;

// Parse and print the flag values: "none|tma|se|sts|copy", "tensor|channel|element",
// "constant|cosine", "own|copy|ema". A bad value is a UsageError naming the flag.
SmoothingMode parse_smoothing_mode(const std::string& s);
Granularity parse_granularity(const std::string& s);
MomentumSchedule parse_momentum_schedule(const std::string& s);
BnBufferPolicy parse_bn_buffer_policy(const std::string& s);
const char* smoothing_mode_name(SmoothingMode m);
const char* granularity_name(Granularity g);
const char* momentum_schedule_name(MomentumSchedule s);
const char* bn_buffer_policy_name(BnBufferPolicy b);

struct TeacherConfig {
  SmoothingMode mode = SmoothingMode::Sts;
  Granularity granularity = Granularity::Tensor;  // the official code's choice
  float preserve_prob = 0.7f;                     // p (BYOL's value)
  float momentum = 0.99f;                         // m_0
  MomentumSchedule schedule = MomentumSchedule::Cosine;
  int64_t total_steps = 0;                        // K of the cosine schedule
  BnBufferPolicy bn_buffers = BnBufferPolicy::Own;
  uint64_t seed = 0;
};

// Everything a checkpoint must hold to continue the smoothing exactly: the configuration and
// the number of updates applied. As strings, so any container (safetensors' __metadata__,
// config.json) can hold it; keys are prefixed "smoothing." (the teacher model's own tensors
// and metadata use "teacher.").
struct TeacherState {
  TeacherConfig config;
  int64_t step = 0;  // the next step to apply = updates applied so far

  std::map<std::string, std::string> to_strings() const;
  // Throws Error naming the key that is missing or malformed.
  static TeacherState from_strings(const std::map<std::string, std::string>& kv);
};

struct TeacherStats {
  int64_t fragments = 0;          // fragments in the arena at this granularity
  double fragments_updated = 0;   // fraction of them updated at the step
  double params_updated = 0;      // fraction of parameters updated at the step
};

// ---- the mosaic: how old each fragment of the teacher is --------------------------------------
// The age of a fragment after the update of step k is k - j for the last step j <= k whose draw
// updated it (replaced or blended), or k + 1 when no step since the start of the run did (it
// still holds the copy initialise() made before step 0). So an update at step k gives age 0,
// TMA (p = 0) keeps every age at 0 and `none` lets every age grow as k + 1.
//
// Computed by walking back from step k through the kernel's own draws
// Philox(seed, kStreamTeacher, j, f) until one updates f, capped at step 0: 1 / (1 - p) draws per
// fragment on average (3.3 at p = 0.7). `preserve_prob` is the mode's p (0: every step updates).
// `skipped` (ascending): steps whose update did not happen (--on-nonfinite skip); walked past.
int64_t fragment_age(uint64_t seed, float preserve_prob, uint64_t fragment, int64_t step,
                     const std::vector<int64_t>& skipped = {});

// The ages of one slot's fragments (tensor: 1, channel: one per output channel, element: one
// per element), in arena order.
struct SlotAges {
  std::string name;
  Shape shape;
  int64_t fragment_numel = 0;  // elements per fragment: numel, numel / channels or 1
  // False for a 1-D slot under channel granularity that shares the fragments of an earlier
  // slot (a conv's bias, the BatchNorm after it): counted once among the fragments.
  bool owns_fragments = true;
  std::vector<int64_t> age;
};

// A summary of the ages for a metrics line.
struct TeacherAgeStats {
  int64_t fragments = 0;      // distinct fragments
  double mean = 0;            // mean age over the fragments
  double param_mean = 0;      // mean age over the parameters (a fragment weighs its elements)
  int64_t p50 = 0, p90 = 0, p99 = 0, max = 0;  // fragment quantiles (nearest rank)
  // Fragments per bin: bin 0 is age 0, bin b >= 1 holds ages in [2^(b-1), 2^b) (age_bin);
  // ends at the last non-empty bin.
  std::vector<int64_t> histogram;
  struct Layer {
    std::string name;     // the slot name less its last part: "layer1.0.conv1", "net.0"
    int64_t params = 0;
    double updated = 0;   // fraction of its parameters updated at step k (age 0)
    double mean_age = 0;  // over its parameters
  };
  std::vector<Layer> layers;  // in the order the table first names them
};
int age_bin(int64_t age);
// Over the slots of one or more smoothers (BYOL: backbone and projector, names prefixed).
TeacherAgeStats age_stats(const std::vector<SlotAges>& slots);

class TeacherSmoother {
 public:
  // `params` is the table of both parameter arenas, `buffers` that of both BN buffer arenas
  // (may be empty). Validates the configuration (UsageError naming the flag).
  TeacherSmoother(const ParamTable& params, const ParamTable& buffers, Device device, TeacherConfig config);

  // Step k of the smoothing, from the student as the last optimizer step left it. Applies the
  // mode to the parameters and the BN policy to the buffers; records k + 1 as the next step.
  void update(const Arena& student_params, Arena& teacher_params, const Arena& student_buffers,
              Arena& teacher_buffers, int64_t step);
  // teacher = student over both arenas, whatever the mode: the start of every run (unlike the
  // official code, which passes the initialisation through the mask).
  void initialise(const Arena& student_params, Arena& teacher_params, const Arena& student_buffers,
                  Arena& teacher_buffers);
  // From now on update() reads *flag on the device and changes nothing when it is non-zero
  // (--on-nonfinite skip in FixMatch, whose teacher follows the optimizer step: a dropped
  // step drops both). `skipped_steps` (may be empty) lists the steps skipped so far, ascending
  // (engine/nonfinite.h's record, read when called): ages_at and stats_at leave those steps'
  // draws out, as for a run whose update at that step never happened. The draws of the other
  // steps stay keyed by their step, so the step counter advances as before. initialise()
  // never skips. Null: never.
  void skip_when(const int32_t* flag, std::function<std::vector<int64_t>()> skipped_steps = {}) {
    skip_ = flag;
    skipped_steps_ = std::move(skipped_steps);
  }

  float momentum_at(int64_t step) const;  // m_k (0 for se and copy)
  float preserve_prob() const;            // p of the mode (0 for tma and copy)
  TeacherStats stats_at(int64_t step) const;  // host-side, from the same draws as the kernel
  // Every fragment's age after the update of `step` (fragment_age), per parameter slot in table
  // order; host-side like stats_at. Element granularity reads four elements' draws from one
  // Philox block per step walked, as the kernel does: O(parameters) work per call.
  std::vector<SlotAges> ages_at(int64_t step) const;

  const TeacherState& state() const { return state_; }
  void restore(const TeacherState& s);  // the configuration must match; takes the step

 private:
  float scheduled_momentum(int64_t step) const;  // the schedule's m_k, whatever the mode
  void apply(const kernels::TeacherRule& rule, const ParamTable& table, const DeviceTable<kernels::TeacherSlot>& slots,
             const DeviceTable<kernels::ArenaChunk>& chunks, const Arena& student, Arena& teacher) const;

  const ParamTable& params_;
  const ParamTable& buffers_;
  Device device_;
  TeacherState state_;
  DeviceTable<kernels::TeacherSlot> param_slots_, buffer_slots_;
  DeviceTable<kernels::ArenaChunk> param_chunks_, buffer_chunks_;
  const int32_t* skip_ = nullptr;  // device flag, see skip_when()
  std::function<std::vector<int64_t>()> skipped_steps_;  // likewise
};

// The TeacherSlot rows of a table (exposed for tests and benchmarks).
std::vector<kernels::TeacherSlot> teacher_slots(const ParamTable& table);

}  // namespace tessera
