#include "engine/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "engine/check.h"
#include "kernels/nonfinite.h"

namespace tessera {

namespace {

using json = nlohmann::ordered_json;

// The official reader refuses headers above 100 MB; so do we, before allocating anything.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

bool parse_st_dtype(const std::string& s, StDType* out) {
  static const std::pair<const char*, StDType> kNames[] = {
      {"F32", StDType::F32}, {"I64", StDType::I64}, {"I32", StDType::I32}, {"U8", StDType::U8}};
  for (const auto& [name, t] : kNames) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string errno_text() { return std::strerror(errno); }

// write(2) until everything is out (it may write less than asked).
void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(cat("cannot write '", path, "': ", errno_text()));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

const char* st_dtype_name(StDType t) {
  switch (t) {
    case StDType::F32: return "F32";
    case StDType::I64: return "I64";
    case StDType::I32: return "I32";
    case StDType::U8: return "U8";
  }
  return "?";
}

size_t st_dtype_size(StDType t) {
  switch (t) {
    case StDType::F32: return 4;
    case StDType::I64: return 8;
    case StDType::I32: return 4;
    case StDType::U8: return 1;
  }
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- writer ------------------------------------------------------------------------------

void SafetensorsWriter::add_bytes(const std::string& name, StDType dtype, const std::vector<int64_t>& shape,
                                  const void* data, size_t bytes) {
  TS_CHECK(!name.empty() && name != "__metadata__", "invalid tensor name '", name, "'");
  for (const Entry& e : entries_) TS_CHECK(e.name != name, "tensor '", name, "' added twice");
  for (int64_t d : shape) TS_CHECK(d >= 0, "tensor '", name, "' has a negative dim in ", shape_str(shape));
  TS_CHECK(static_cast<size_t>(numel_of(shape)) * st_dtype_size(dtype) == bytes, "tensor '", name, "': ",
           bytes, " bytes given for ", st_dtype_name(dtype), " ", shape_str(shape));
  Entry e{name, dtype, shape, {}};
  e.bytes.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  add_bytes(name, StDType::F32, shape, data, static_cast<size_t>(numel_of(shape)) * sizeof(float));
}

void SafetensorsWriter::add_f32(const std::string& name, const Tensor& t) {
  const std::vector<float> host = to_host_f32(t);
  add_f32(name, t.shape.vec(), host.data());
}

void SafetensorsWriter::add_i64(const std::string& name, const std::vector<int64_t>& shape,
                                const std::vector<int64_t>& v) {
  add_bytes(name, StDType::I64, shape, v.data(), v.size() * sizeof(int64_t));
}

void SafetensorsWriter::add_i32(const std::string& name, const std::vector<int64_t>& shape,
                                const std::vector<int32_t>& v) {
  add_bytes(name, StDType::I32, shape, v.data(), v.size() * sizeof(int32_t));
}

void SafetensorsWriter::add_u8(const std::string& name, const std::vector<int64_t>& shape,
                               const std::vector<uint8_t>& v) {
  add_bytes(name, StDType::U8, shape, v.data(), v.size());
}

void SafetensorsWriter::add_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

std::string SafetensorsWriter::first_nonfinite() const {
  for (const Entry& e : entries_) {
    if (e.dtype != StDType::F32) continue;
    const size_t n = e.bytes.size() / sizeof(float);
    for (size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, e.bytes.data() + i * sizeof(float), sizeof v);
      if (kernels::is_nonfinite(v)) return cat(e.name, " (element ", i, " = ", v, ")");
    }
  }
  return {};
}

void SafetensorsWriter::write(const std::string& path) const {
  json header = json::object();
  if (!metadata_.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", st_dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  // Pad with spaces so the data region starts 8-byte aligned, as the reference writer does.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  uint8_t length[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(n >> (8 * i));

  const std::string tmp = cat(path, ".tmp-", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(cat("cannot create '", tmp, "': ", errno_text()));
  try {
    write_all(fd, length, sizeof length, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const Entry& e : entries_) write_all(fd, e.bytes.data(), e.bytes.size(), tmp);
    if (::fsync(fd) != 0) throw Error(cat("cannot flush '", tmp, "' to disk: ", errno_text()));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(cat("cannot close '", tmp, "': ", errno_text()));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(cat("cannot rename '", tmp, "' to '", path, "': ", why));
  }
  // The rename is durable only once the directory entry is on disk.
  const std::string dir = directory_of(path);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw Error(cat("cannot open directory '", dir, "' to flush it: ", errno_text()));
  const int rc = ::fsync(dfd);
  ::close(dfd);
  if (rc != 0) throw Error(cat("cannot flush directory '", dir, "': ", errno_text()));
}

// ---- reader ------------------------------------------------------------------------------

int64_t SafetensorsFile::Entry::numel() const { return numel_of(shape); }

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  // A folder or a FIFO opens, and then fails (or blocks) at the first read: named here.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(cat("checkpoint '", path, "': expected a safetensors file, found ",
                    S_ISDIR(st.st_mode) ? "a folder" : "something that is not a regular file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(cat("cannot open checkpoint '", path, "': ", errno_text()));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(cat("cannot read checkpoint '", path, "': ", errno_text()));
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& origin) {
  const auto bad = [&origin](const std::string& what) {
    return Error(cat("checkpoint '", origin, "': ", what));
  };
  if (bytes.size() < 8)
    throw bad(cat("file is ", bytes.size(), " bytes, shorter than the 8-byte header length (truncated?)"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
  if (n > kMaxHeaderBytes || n > bytes.size() - 8)
    throw bad(cat("header length field says ", n, " bytes but the file has ", bytes.size() - 8,
                  " bytes after it (truncated or not a safetensors file)"));

  SafetensorsFile f;
  f.path_ = origin;
  f.data_start_ = 8 + static_cast<size_t>(n);
  const size_t data_bytes = bytes.size() - f.data_start_;
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + static_cast<std::ptrdiff_t>(f.data_start_));
  } catch (const json::exception& e) {
    throw bad(cat("header is not valid JSON (", e.what(), ")"));
  }
  if (!header.is_object()) throw bad(cat("header is a JSON ", header.type_name(), ", expected an object"));

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw bad("__metadata__ is not an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) throw bad(cat("__metadata__ value for '", k, "' is a ", v.type_name(), ", expected a string"));
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = cat("tensor '", name, "': ");
    if (!value.is_object()) throw bad(where + "entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string()) throw bad(where + "missing string field 'dtype'");
    Entry e{};
    const std::string dtype = value["dtype"].get<std::string>();
    if (!parse_st_dtype(dtype, &e.dtype)) throw bad(where + cat("dtype '", dtype, "' is not one of F32, I64, I32, U8"));
    if (!value.contains("shape") || !value["shape"].is_array()) throw bad(where + "missing array field 'shape'");
    uint64_t numel = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad(where + cat("shape ", d.dump(), " is not a list of non-negative integers"));
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > data_bytes / dim + 1) throw bad(where + cat("shape ", value["shape"].dump(), " is larger than the file"));
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = value.contains("data_offsets") ? value["data_offsets"] : json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad(where + "data_offsets must be two non-negative integers [begin, end]");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_bytes)
      throw bad(where + cat("data_offsets [", begin, ", ", end, "] fall outside the ", data_bytes,
                            " data bytes of the file (truncated?)"));
    // The byte count must not wrap around 64 bits to a size the data_offsets happen to match.
    if (numel > std::numeric_limits<uint64_t>::max() / st_dtype_size(e.dtype))
      throw bad(where + cat("shape ", value["shape"].dump(), " is larger than the file"));
    const uint64_t expected = numel * st_dtype_size(e.dtype);
    if (end - begin != expected)
      throw bad(where + cat("data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes, expected ", expected,
                            " for ", dtype, " ", shape_str(e.shape)));
    e.begin = static_cast<size_t>(begin);
    e.end = static_cast<size_t>(end);
    f.tensors_[name] = e;
  }

  // The byte ranges must tile the data region: sorted by (begin, end), so an empty tensor comes
  // before a non-empty one that starts at its offset, each starts where the last ended.
  std::vector<std::tuple<size_t, size_t, const std::string*>> order;
  for (const auto& [name, e] : f.tensors_) order.push_back({e.begin, e.end, &name});
  std::sort(order.begin(), order.end());
  size_t expected_begin = 0;
  const std::string* previous = nullptr;
  for (const auto& [begin, end, name] : order) {
    if (begin != expected_begin) {
      throw bad(cat("tensor '", *name, "': data begins at byte ", begin, ", expected ", expected_begin,
                    begin < expected_begin ? cat(" (overlaps '", *previous, "')") : std::string(" (a gap before it)")));
    }
    expected_begin = end;
    previous = name;
  }
  if (expected_begin != data_bytes)
    throw bad(cat("tensors end at data byte ", expected_begin, " but the file has ", data_bytes, " data bytes"));
  f.bytes_ = std::move(bytes);
  return f;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(cat("checkpoint '", path_, "': no tensor named '", name, "'"));
  return it->second;
}

const std::string& SafetensorsFile::metadata(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) throw Error(cat("checkpoint '", path_, "': no metadata key '", key, "'"));
  return it->second;
}

std::map<std::string, std::string> SafetensorsFile::metadata_under(const std::string& prefix) const {
  std::map<std::string, std::string> out;
  for (const auto& kv : metadata_)
    if (kv.first.rfind(prefix, 0) == 0) out[kv.first.substr(prefix.size())] = kv.second;
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::checked(const std::string& name, StDType dtype,
                                                       const std::vector<int64_t>* shape) const {
  const Entry& e = entry(name);
  if (e.dtype != dtype)
    throw Error(cat("checkpoint '", path_, "': tensor '", name, "' is ", st_dtype_name(e.dtype), ", expected ",
                    st_dtype_name(dtype)));
  if (shape && *shape != e.shape)
    throw Error(cat("checkpoint '", path_, "': tensor '", name, "' has shape ", shape_str(e.shape), ", expected ",
                    shape_str(*shape)));
  return e;
}

template <typename T>
static std::vector<T> copy_out(const uint8_t* p, const SafetensorsFile::Entry& e) {
  std::vector<T> v(static_cast<size_t>(e.numel()));
  if (!v.empty()) std::memcpy(v.data(), p, v.size() * sizeof(T));
  return v;
}

std::vector<float> SafetensorsFile::f32(const std::string& name, const std::vector<int64_t>* shape) const {
  const Entry& e = checked(name, StDType::F32, shape);
  return copy_out<float>(data(e), e);
}
std::vector<int64_t> SafetensorsFile::i64(const std::string& name, const std::vector<int64_t>* shape) const {
  const Entry& e = checked(name, StDType::I64, shape);
  return copy_out<int64_t>(data(e), e);
}
std::vector<int32_t> SafetensorsFile::i32(const std::string& name, const std::vector<int64_t>* shape) const {
  const Entry& e = checked(name, StDType::I32, shape);
  return copy_out<int32_t>(data(e), e);
}
std::vector<uint8_t> SafetensorsFile::u8(const std::string& name, const std::vector<int64_t>* shape) const {
  const Entry& e = checked(name, StDType::U8, shape);
  return copy_out<uint8_t>(data(e), e);
}

// ---- arenas ------------------------------------------------------------------------------

namespace {
StDType stored_dtype(ParamKind k) { return k == ParamKind::BnNumBatches ? StDType::I64 : StDType::F32; }
}  // namespace

void add_arena(SafetensorsWriter& w, const Arena& arena, const std::string& prefix) {
  const std::vector<float> host = to_host_f32(arena.all());  // one copy for the whole arena
  for (const Slot& s : arena.table().slots()) {
    const float* p = host.data() + s.offset;
    if (stored_dtype(s.kind) == StDType::I64) {
      std::vector<int64_t> v(static_cast<size_t>(s.numel));
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(p[i]);
      // PyTorch keeps num_batches_tracked as a 0-dim tensor; the arena needs one dim.
      w.add_i64(prefix + s.name, {}, v);
    } else {
      w.add_f32(prefix + s.name, s.shape.vec(), p);
    }
  }
}

void load_arenas(const SafetensorsFile& f, const std::vector<const Arena*>& arenas, const std::string& prefix,
                 bool allow_unexpected) {
  std::vector<std::string> problems;
  std::set<std::string> claimed;
  for (const Arena* a : arenas) {
    for (const Slot& s : a->table().slots()) {
      const std::string name = prefix + s.name;
      claimed.insert(name);
      if (!f.has(name)) {
        problems.push_back(cat("missing '", name, "'"));
        continue;
      }
      const SafetensorsFile::Entry& e = f.entry(name);
      const StDType want = stored_dtype(s.kind);
      // num_batches_tracked: PyTorch writes a 0-dim tensor; our slot is (1).
      const std::vector<int64_t> want_shape = want == StDType::I64 ? std::vector<int64_t>{} : s.shape.vec();
      if (e.dtype != want) {
        problems.push_back(cat("'", name, "' is ", st_dtype_name(e.dtype), ", expected ", st_dtype_name(want)));
      } else if (e.shape != want_shape) {
        problems.push_back(cat("'", name, "' has shape ", shape_str(e.shape), ", expected ", shape_str(want_shape)));
      } else if (want == StDType::F32) {
        // The writer refuses non-finite values (SafetensorsWriter::first_nonfinite), so one here
        // was put there after the file was written: refused now, not blamed on training later.
        const std::vector<float> v = f.f32(name);
        const auto bad = std::find_if(v.begin(), v.end(), [](float x) { return kernels::is_nonfinite(x); });
        if (bad != v.end())
          problems.push_back(cat("'", name, "' element ", bad - v.begin(), " is ", *bad,
                                 " (a checkpoint holds finite values only: the file was changed or damaged)"));
      }
    }
  }
  if (!allow_unexpected) {
    for (const auto& [name, e] : f.tensors())
      if (name.compare(0, prefix.size(), prefix) == 0 && !claimed.count(name))
        problems.push_back(cat("unexpected '", name, "' ", shape_str(e.shape)));
  }
  if (!problems.empty()) {
    std::string all;
    const size_t shown = std::min<size_t>(problems.size(), 8);
    for (size_t i = 0; i < shown; ++i) all += (i ? "; " : "") + problems[i];
    if (problems.size() > shown) all += cat("; and ", problems.size() - shown, " more");
    throw Error(cat("checkpoint '", f.path(), "' does not match the model (", problems.size(),
                    problems.size() == 1 ? " problem" : " problems", "): ", all));
  }

  for (const Arena* a : arenas) {
    std::vector<float> host = to_host_f32(a->all());  // keeps the gaps (canaries) as they are
    for (const Slot& s : a->table().slots()) {
      const std::string name = prefix + s.name;
      float* p = host.data() + s.offset;
      if (stored_dtype(s.kind) == StDType::I64) {
        const std::vector<int64_t> v = f.i64(name);
        for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
      } else {
        const std::vector<float> v = f.f32(name);
        std::copy(v.begin(), v.end(), p);
      }
    }
    from_host(a->all(), host);
  }
}

}  // namespace tessera
