// The Spatial-Temporal Smoothing rule for one teacher element, shared by the CPU and CUDA
// backends (kernels/cpu/teacher_update.cpp, kernels/cuda/teacher_update.cu) and by the
// host-side statistics (engine/teacher.cpp).
//
// At step k every fragment f of the arena gets one draw u_f in (0, 1] from Philox
// (seed, kStreamTeacher, k, f):
//   keep   (u_f <  p):  teacher stays as it is
//   update (u_f >= p):  teacher = m * teacher + (1 - m) * student
// TMA is p = 0, Spatial Ensemble is m = 0, STS is both, a copy is p = 0 and m = 0.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/hd.h"

namespace kernels {

// How an arena is cut into fragments that share one draw.
enum class Granularity : int32_t {
  Tensor = 0,   // fragment id = slot index
  Channel = 1,  // fragment id = slot's channel_fragment_base + row (output channel)
  Element = 2,  // fragment id = arena element index (gaps included in the numbering)
};

// What the teacher kernel needs to know about one slot: a plain copy of the engine's Slot
// fields, uploaded once when the smoother is built.
struct TeacherSlot {
  int64_t offset;                 // first element in the arena
  int64_t numel;
  int64_t row_numel;              // numel / channels: the elements of one channel fragment
  int64_t channel_fragment_base;  // channel fragment id of row 0
  int32_t index;                  // the slot's position in the table: its tensor fragment id
  int32_t unused = 0;
};

// One step of the rule, for every element of an arena.
struct TeacherRule {
  uint64_t seed;
  uint64_t step;
  float preserve_prob;  // p; 0 updates every fragment (and skips the draws)
  float momentum;       // m_k
  Granularity granularity;
  // Device flag (kernels/nonfinite.h's NonfiniteRecord::skip): non-zero drops the update.
  const int32_t* skip = nullptr;
};

// The fragment that arena element i (inside slot s) belongs to.
TS_HD uint64_t teacher_fragment(const TeacherSlot& s, Granularity g, int64_t i) {
  switch (g) {
    case Granularity::Tensor: return static_cast<uint64_t>(s.index);
    case Granularity::Channel:
      return static_cast<uint64_t>(s.channel_fragment_base + (i - s.offset) / s.row_numel);
    case Granularity::Element: break;
  }
  return static_cast<uint64_t>(i);
}

// One past the last arena element of the fragment that holds element i.
TS_HD int64_t teacher_fragment_end(const TeacherSlot& s, Granularity g, int64_t i) {
  switch (g) {
    case Granularity::Tensor: return s.offset + s.numel;
    case Granularity::Channel: return s.offset + ((i - s.offset) / s.row_numel + 1) * s.row_numel;
    case Granularity::Element: break;
  }
  return i + 1;
}

// The Bernoulli decision. u is in (0, 1] (curand_uniform's range), so p = 0 never keeps;
// P(update) = 1 - p up to the 2^-32 spacing of the draws. The draw can be exactly 1.0f
// (philox_to_uniform of the top 128 words rounds up), which `u < p` would update at p = 1:
// p >= 1 keeps by rule, as its name promises.
TS_HD bool sts_keep(float u, float preserve_prob) { return preserve_prob >= 1.0f || u < preserve_prob; }

// teacher' = m * teacher + (1 - m) * student, rounded the same way on every compiler.
//
// Why fmaf: whether `m * t + (1 - m) * s` becomes one fused multiply-add or a multiply and an
// add, and which of the two products gets fused, is the compiler's choice: nvcc fuses by
// default (-fmad=true); g++ fuses under its C++ default -ffp-contract=fast when the target has
// FMA (-march=native) and not otherwise. The last bit would depend on compiler and flags.
// Spelling the FMA out removes the choice: (1 - m) and (1 - m) * s are single IEEE operations
// with one rounding each (a subtraction and a product: nothing there can be fused), and
// fmaf(m, t, x) is one correctly rounded operation everywhere (the GPU's FFMA, the x86 FMA
// instruction, or glibc's exact software fmaf). Hence CPU and GPU teachers are bit-identical.
//
// m == 0 (Spatial Ensemble, copy) returns the student value itself, not 0 * t + s: a copy
// must not turn an inf or NaN left in the old teacher into NaN, nor change the sign of a zero.
TS_HD float sts_blend(float teacher, float student, float momentum) {
  if (momentum == 0.0f) return student;
  return fmaf(momentum, teacher, (1.0f - momentum) * student);
}

// The whole rule for one element, given its fragment's draw u.
TS_HD float sts_rule(float teacher, float student, float u, float preserve_prob, float momentum) {
  return sts_keep(u, preserve_prob) ? teacher : sts_blend(teacher, student, momentum);
}

}  // namespace kernels
