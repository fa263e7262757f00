#include "engine/arena.h"

#include <algorithm>
#include <cstring>

#include "engine/check.h"

namespace tessera {

const char* param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::ConvWeight: return "conv-weight";
    case ParamKind::LinearWeight: return "linear-weight";
    case ParamKind::Bias: return "bias";
    case ParamKind::BnWeight: return "bn-weight";
    case ParamKind::BnBias: return "bn-bias";
    case ParamKind::BnRunningMean: return "bn-running-mean";
    case ParamKind::BnRunningVar: return "bn-running-var";
    case ParamKind::BnNumBatches: return "bn-num-batches";
  }
  return "?";
}

bool is_weight_matrix(ParamKind k) { return k == ParamKind::ConvWeight || k == ParamKind::LinearWeight; }

int ParamTable::add(const std::string& name, Shape shape, ParamKind kind) {
  TS_CHECK(find(name) < 0, "parameter '", name, "' registered twice");
  TS_CHECK(shape.ndim >= 1 && shape.numel() > 0, "parameter '", name, "' has empty shape ", shape.str());
  Slot s;
  s.name = name;
  s.shape = shape;
  s.kind = kind;
  s.offset = end_;
  s.numel = shape.numel();
  s.channels = shape[0];
  // A 1-D slot joins the channel fragments of the latest multi-dim slot of the same width.
  bool shared = false;
  if (shape.ndim == 1) {
    for (auto it = slots_.rbegin(); it != slots_.rend(); ++it) {
      if (it->shape.ndim > 1 && it->channels == s.channels) {
        s.channel_fragment_base = it->channel_fragment_base;
        shared = true;
        break;
      }
    }
  }
  if (!shared) {
    s.channel_fragment_base = next_channel_fragment_;
    next_channel_fragment_ += s.channels;
  }
  // Leave at least one aligned gap after every slot: room for canaries.
  end_ = (s.offset + s.numel + kAlign) / kAlign * kAlign;
  slots_.push_back(s);
  return static_cast<int>(slots_.size() - 1);
}

int ParamTable::find(const std::string& name) const {
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].name == name) return static_cast<int>(i);
  return -1;
}

int64_t ParamTable::total_numel() const {
  int64_t n = 0;
  for (const Slot& s : slots_) n += s.numel;
  return n;
}

int64_t ParamTable::arena_numel() const { return end_; }

bool ParamTable::same_layout(const ParamTable& o) const {
  if (slots_.size() != o.slots_.size()) return false;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot &a = slots_[i], &b = o.slots_[i];
    if (a.name != b.name || a.shape != b.shape || a.kind != b.kind || a.offset != b.offset) return false;
  }
  return true;
}

int ParamTable::slot_of(int64_t i) const {
  auto it = std::upper_bound(slots_.begin(), slots_.end(), i,
                             [](int64_t v, const Slot& s) { return v < s.offset; });
  if (it == slots_.begin()) return -1;
  --it;
  return i < it->offset + it->numel ? static_cast<int>(it - slots_.begin()) : -1;
}

Arena::Arena(const ParamTable& table, Device device)
    : table_(&table), buffer_(device, static_cast<size_t>(table.arena_numel()) * sizeof(float)) {
  zero();
}

Tensor Arena::slot(size_t i) const {
  TS_CHECK(i < table_->size(), "slot ", i, " of a table with ", table_->size(), " slots");
  const Slot& s = (*table_)[i];
  return Tensor(data() + s.offset, s.shape, DType::F32, device());
}

Tensor Arena::slot(const std::string& name) const {
  int i = table_->find(name);
  TS_CHECK(i >= 0, "no parameter named '", name, "'");
  return slot(static_cast<size_t>(i));
}

Tensor Arena::all() const {
  return Tensor(data(), Shape{table_->arena_numel()}, DType::F32, device());
}

void Arena::zero() { fill_zero(all()); }

void Arena::copy_from(const Arena& src) {
  TS_CHECK(table_->same_layout(src.table()), "arena copy between different parameter tables");
  copy(all(), src.all());
}

// The gaps of an arena, as [begin, end) element ranges, each after slot `owner`.
namespace {
struct Gap {
  int64_t begin, end;
  size_t owner;
};
std::vector<Gap> gaps_of(const ParamTable& t) {
  std::vector<Gap> gaps;
  for (size_t i = 0; i < t.size(); ++i) {
    const int64_t begin = t[i].offset + t[i].numel;
    const int64_t end = i + 1 < t.size() ? t[i + 1].offset : t.arena_numel();
    gaps.push_back({begin, end, i});
  }
  return gaps;
}
}  // namespace

void Arena::write_canaries() {
  std::vector<float> host = to_host_f32(all());
  float canary;
  std::memcpy(&canary, &kCanaryBits, sizeof canary);
  for (const Gap& g : gaps_of(*table_))
    for (int64_t i = g.begin; i < g.end; ++i) host[static_cast<size_t>(i)] = canary;
  from_host(all(), host);
}

std::vector<std::string> Arena::broken_canaries() const {
  std::vector<float> host = to_host_f32(all());
  std::vector<std::string> broken;
  for (const Gap& g : gaps_of(*table_)) {
    for (int64_t i = g.begin; i < g.end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &host[static_cast<size_t>(i)], sizeof bits);
      if (bits != kCanaryBits) {
        broken.push_back(cat("after slot '", (*table_)[g.owner].name, "' (element ", i, ")"));
        break;
      }
    }
  }
  return broken;
}

}  // namespace tessera
