// Checkpoints as safetensors files (https://github.com/huggingface/safetensors):
//
//   8 bytes   little-endian u64 N, the header length
//   N bytes   JSON: {"name": {"dtype": "F32", "shape": [64, 3, 7, 7], "data_offsets": [b, e]},
//              ..., "__metadata__": {"key": "string value", ...}}, padded with spaces
//   rest      the tensors' raw little-endian bytes; offsets are relative to the end of the
//              header and the tensors tile this region exactly (no gaps, no overlaps)
//
// Model tensors carry PyTorch's names ("layer1.0.bn1.running_mean"), so a saved backbone
// loads into torchvision with load_state_dict(strict=True). Other state (a teacher, optimizer
// moments, counters) goes into the same file under a prefix ("teacher.", "optim.").
//
// Writes are atomic: the file is written to a temporary name in the same directory, flushed
// to disk, renamed over the target and the directory entry flushed, so a run killed at any
// moment leaves either the old checkpoint or the new one, never a torn file.
//
// Reading validates everything before anything is used: header length against the file
// size, the JSON, every dtype, shape and byte range; a truncated or corrupted file is an
// Error whose one line names the file, the tensor and what was expected and found.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/tensor.h"

namespace tessera {

// The safetensors dtypes the engine writes and reads.
enum class StDType { F32, I64, I32, U8 };
const char* st_dtype_name(StDType t);  // "F32", "I64", ...
size_t st_dtype_size(StDType t);

class SafetensorsWriter {
 public:
  // Tensors are written in the order they are added. Names must be unique.
  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data);
  void add_f32(const std::string& name, const Tensor& t);  // any device; copied to the host now
  void add_i64(const std::string& name, const std::vector<int64_t>& shape, const std::vector<int64_t>& v);
  void add_i32(const std::string& name, const std::vector<int64_t>& shape, const std::vector<int32_t>& v);
  void add_u8(const std::string& name, const std::vector<int64_t>& shape, const std::vector<uint8_t>& v);
  void add_metadata(const std::string& key, const std::string& value);

  // The first f32 tensor holding a NaN or an infinity, as "name (element i = value)"; empty
  // when every one is finite. A scan of the host copies: cheap next to writing them.
  std::string first_nonfinite() const;

  // Writes the file atomically (temporary file, fsync, rename, fsync of the directory).
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    StDType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  void add_bytes(const std::string& name, StDType dtype, const std::vector<int64_t>& shape,
                 const void* data, size_t bytes);
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsFile {
 public:
  struct Entry {
    StDType dtype;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte range inside the data region
    int64_t numel() const;
  };

  // Reads and validates the whole file; throws Error on any defect.
  static SafetensorsFile read(const std::string& path);
  // The same from bytes in memory (`origin` names them in errors).
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

  const std::string& path() const { return path_; }
  const std::map<std::string, Entry>& tensors() const { return tensors_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;  // Error naming the tensor when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The metadata value for `key`; Error when absent.
  const std::string& metadata(const std::string& key) const;
  // The metadata keys that begin with `prefix`, the prefix cut off (one part's state of several).
  std::map<std::string, std::string> metadata_under(const std::string& prefix) const;

  // Typed reads. Each checks the dtype and, when `shape` is given, the shape, and says
  // which tensor did not match and how.
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>* shape = nullptr) const;
  std::vector<int64_t> i64(const std::string& name, const std::vector<int64_t>* shape = nullptr) const;
  std::vector<int32_t> i32(const std::string& name, const std::vector<int64_t>* shape = nullptr) const;
  std::vector<uint8_t> u8(const std::string& name, const std::vector<int64_t>* shape = nullptr) const;

 private:
  const uint8_t* data(const Entry& e) const { return bytes_.data() + data_start_ + e.begin; }
  const Entry& checked(const std::string& name, StDType dtype, const std::vector<int64_t>* shape) const;

  std::string path_;
  std::vector<uint8_t> bytes_;
  size_t data_start_ = 0;
  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[64, 3, 7, 7]"

// ---- arenas under their tables' names --------------------------------------------------
//
// Every slot of the arena is written as prefix + slot name. Slots of kind BnNumBatches are
// held as floats in the buffer arena and written as I64, as PyTorch stores
// num_batches_tracked; everything else is F32.
void add_arena(SafetensorsWriter& w, const Arena& arena, const std::string& prefix = "");

// Loads every slot of every arena from prefix + slot name. All problems are collected first
// (missing tensors, wrong dtype or shape, NaN or infinity, and - unless allow_unexpected -
// tensors under the prefix that belong to no table) and reported together in one Error;
// nothing is written to any arena unless everything matches.
void load_arenas(const SafetensorsFile& f, const std::vector<const Arena*>& arenas,
                 const std::string& prefix = "", bool allow_unexpected = false);

}  // namespace tessera
