// Parameter tables and arenas.
//
// A ParamTable lists a model's tensors in registration order: name (PyTorch's, e.g.
// "layer1.0.conv1.weight"), shape, kind and offset. An Arena is one allocation laid out by a
// table. A model has a parameter arena, a gradient arena and (for the optimizer and the
// teacher) more arenas under the *same* table, so an arena-wide operation (zero the grads, an
// optimizer step, the teacher update) is one pass over one pointer, and element i of any
// arena means the same parameter. BatchNorm running statistics live in a buffer arena with a
// table of their own.
//
// Slots start on 64-byte boundaries (16 floats) so kernels can use vector loads; the gap
// after each slot can hold canary values that tests check to catch writes past a tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace tessera {

enum class ParamKind {
  ConvWeight,     // (O, I, KH, KW)
  LinearWeight,   // (O, I)
  Bias,           // (O), belongs to the weight before it
  BnWeight,       // (C), gamma
  BnBias,         // (C), beta
  BnRunningMean,  // buffer (C)
  BnRunningVar,   // buffer (C)
  BnNumBatches,   // buffer (1), PyTorch's num_batches_tracked (int64 in checkpoints)
};
const char* param_kind_name(ParamKind k);
bool is_weight_matrix(ParamKind k);  // conv / linear weights: the ones weight decay applies to

struct Slot {
  std::string name;
  Shape shape;
  ParamKind kind;
  int64_t offset = 0;  // in elements from the start of the arena
  int64_t numel = 0;
  // Channel fragments (teacher smoothing, granularity=channel): a slot is split into
  // `channels` rows of numel / channels elements. A 1-D slot (bias, BN vector) shares the
  // fragment ids of the most recent multi-dim slot with the same channel count, so channel c
  // of a conv, its bias and the following BN's gamma/beta are replaced together.
  int64_t channels = 1;
  int64_t channel_fragment_base = 0;  // id of this slot's channel 0 in the channel numbering
};

class ParamTable {
 public:
  static constexpr int64_t kAlign = 16;  // elements (64 bytes of f32)

  int add(const std::string& name, Shape shape, ParamKind kind);  // returns the slot index
  const std::vector<Slot>& slots() const { return slots_; }
  const Slot& operator[](size_t i) const { return slots_[i]; }
  size_t size() const { return slots_.size(); }
  int find(const std::string& name) const;  // -1 when absent
  int64_t total_numel() const;              // sum of slot sizes (what the model holds)
  int64_t arena_numel() const;              // with alignment gaps (what an arena allocates)
  int64_t channel_fragments() const { return next_channel_fragment_; }
  bool same_layout(const ParamTable& other) const;  // names, shapes, kinds, offsets
  // Slot index that owns element `i` of an arena, or -1 for a gap (binary search).
  int slot_of(int64_t i) const;

 private:
  std::vector<Slot> slots_;
  int64_t end_ = 0;
  int64_t next_channel_fragment_ = 0;
};

class Arena {
 public:
  static constexpr uint32_t kCanaryBits = 0x7fc0deadu;  // a quiet NaN nobody computes

  Arena() = default;
  Arena(const ParamTable& table, Device device);
  Arena(Arena&&) = default;
  Arena& operator=(Arena&&) = default;

  const ParamTable& table() const { return *table_; }
  Device device() const { return buffer_.device(); }
  float* data() const { return static_cast<float*>(buffer_.data()); }
  Tensor slot(size_t i) const;        // view of one tensor
  Tensor slot(const std::string& name) const;
  Tensor all() const;                 // the whole allocation, gaps included, as (arena_numel)
  void zero();                        // one memset over the arena
  void copy_from(const Arena& src);   // one copy; tables must have the same layout
  void write_canaries();              // fill every gap with kCanaryBits
  // Gaps whose canaries changed, as "after slot 'name' (element i)"; empty when intact.
  std::vector<std::string> broken_canaries() const;

 private:
  const ParamTable* table_ = nullptr;
  Buffer buffer_;
};

}  // namespace tessera
