// The `--data` spec, the choice of reader, per-dataset normalisation constants and the file
// helpers every reader shares.
#include "data/dataset.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "data/readers.h"
#include "engine/check.h"

namespace tessera::data {

const char* const kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

const char* split_name(Split s) {
  switch (s) {
    case Split::Train: return "train";
    case Split::Test: return "test";
    case Split::Unlabeled: return "unlabeled";
  }
  return "?";
}

Tensor Dataset::images_view() const {
  return Tensor(const_cast<uint8_t*>(images.data()), Shape{size, channels, height, width}, DType::U8,
                Device::CPU);
}

std::vector<int64_t> Dataset::class_counts() const {
  std::vector<int64_t> counts(static_cast<size_t>(num_classes), 0);
  for (int32_t y : labels) counts[static_cast<size_t>(y)]++;
  return counts;
}

// ---- the spec --------------------------------------------------------------------------

namespace {

const char* const kKinds[] = {"fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "folder"};

// Normalisation constants of the named datasets: per-channel mean and std of the training
// images' pixels / 255 (the values the field uses; fashion-mnist's recomputed from the
// Debian package's files by a test). A folder's constants are measured on the images loaded.
struct KnownStats {
  const char* kind;
  std::vector<float> mean, std;
};
const KnownStats kKnownStats[] = {
    {"fashion-mnist", {0.2860f}, {0.3530f}},
    {"mnist", {0.1307f}, {0.3081f}},
    {"cifar10", {0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}},
    {"cifar100", {0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f}},
    {"stl10", {0.4467f, 0.4398f, 0.4066f}, {0.2603f, 0.2566f, 0.2713f}},
};

}  // namespace

DataSpec parse_data_spec(const std::string& spec) {
  DataSpec s;
  const size_t colon = spec.find(':');
  s.kind = spec.substr(0, colon);
  if (colon != std::string::npos) s.path = spec.substr(colon + 1);
  bool known = false;
  for (const char* k : kKinds) known = known || s.kind == k;
  if (!known)
    throw UsageError(cat("--data: expected KIND[:PATH] with KIND one of fashion-mnist, mnist, cifar10, "
                         "cifar100, stl10, folder; found '", spec, "'"));
  if (colon != std::string::npos && s.path.empty())
    throw UsageError(cat("--data: expected a path after '", s.kind, ":', found nothing"));
  if (s.path.empty() && s.kind != "fashion-mnist")
    throw UsageError(cat("--data: expected ", s.kind, ":PATH (only fashion-mnist has a default path), found '",
                         spec, "'"));
  return s;
}

void match_training_split(const Dataset& train, Dataset* other) {
  if (other->channels != train.channels || other->height != train.height || other->width != train.width)
    throw Error(cat(other->name, ": expected ", train.channels, "x", train.height, "x", train.width, " images like ",
                    train.name, ", found ", other->channels, "x", other->height, "x", other->width));
  if (other->num_classes != train.num_classes)
    throw Error(cat(other->name, ": expected ", train.num_classes, " classes like ", train.name, ", found ",
                    other->num_classes));
  other->mean = train.mean;
  other->std = train.std;
}

std::string fingerprint(const Dataset& d) {
  // crc32 takes a 32-bit length: feed it in chunks.
  auto update = [](uLong crc, const uint8_t* p, size_t n) {
    for (size_t done = 0; done < n;) {
      const uInt chunk = static_cast<uInt>(std::min<size_t>(n - done, size_t{1} << 30));
      crc = crc32(crc, p + done, chunk);
      done += chunk;
    }
    return crc;
  };
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = update(crc, d.images.data(), d.images.size());
  crc = update(crc, reinterpret_cast<const uint8_t*>(d.labels.data()), d.labels.size() * sizeof(int32_t));
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(crc));
  return cat("crc32 ", hex, ", ", d.size, " x ", d.channels, "x", d.height, "x", d.width);
}

void channel_stats(const Dataset& d, std::vector<float>* mean, std::vector<float>* std) {
  mean->assign(static_cast<size_t>(d.channels), 0.0f);
  std->assign(static_cast<size_t>(d.channels), 1.0f);
  const int64_t plane = int64_t{d.height} * d.width;
  for (int c = 0; c < d.channels; ++c) {
    // Integer sums are exact; a 100,000-image STL-10 plane sum fits easily in 64 bits.
    uint64_t sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < d.size; ++i) {
      const uint8_t* p = d.image(i) + c * plane;
      for (int64_t k = 0; k < plane; ++k) {
        sum += p[k];
        sum_sq += uint64_t{p[k]} * p[k];
      }
    }
    const double n = static_cast<double>(d.size * plane);
    if (n == 0) continue;
    const double m = static_cast<double>(sum) / n;
    const double var = static_cast<double>(sum_sq) / n - m * m;
    (*mean)[static_cast<size_t>(c)] = static_cast<float>(m / 255.0);
    // A constant channel would divide by zero; 1 keeps it finite and centred.
    (*std)[static_cast<size_t>(c)] = var > 0 ? static_cast<float>(std::sqrt(var) / 255.0) : 1.0f;
  }
}

DataOptions data_options(const DataSpec& spec, int image_size) {
  DataOptions o;
  if (image_size == 0) return o;
  if (spec.kind != "folder")
    throw UsageError(cat("--image-size ", image_size, ": applies to folder data; ", spec.kind,
                         " images have their own size"));
  if (image_size < 8 || image_size > 1024)
    throw UsageError(cat("--image-size: expected 0 (32) or a side from 8 to 1024, found ", image_size));
  o.image_size = image_size;
  return o;
}

std::string data_root(const DataSpec& spec) {
  return spec.path.empty() && spec.kind == "fashion-mnist" ? kFashionMnistDir : spec.path;
}

Dataset load_dataset(const DataSpec& spec, Split split, const DataOptions& options) {
  Dataset d;
  if (spec.kind == "fashion-mnist" || spec.kind == "mnist") {
    d = read_idx(data_root(spec), split, spec.kind);
  } else if (spec.kind == "cifar10") {
    d = read_cifar(spec.path, split, 10);
  } else if (spec.kind == "cifar100") {
    d = read_cifar(spec.path, split, 100);
  } else if (spec.kind == "stl10") {
    d = read_stl10(spec.path, split);
  } else if (spec.kind == "folder") {
    d = read_folder(spec.path, split, options);
  } else {
    throw UsageError(cat("--data: unknown kind '", spec.kind, "'"));
  }
  d.name = cat(spec.kind, "/", split_name(split));
  if (d.class_names.empty())
    for (int c = 0; c < d.num_classes; ++c) d.class_names.push_back(std::to_string(c));
  for (const KnownStats& k : kKnownStats) {
    if (spec.kind == k.kind && static_cast<int>(k.mean.size()) == d.channels) {
      d.mean = k.mean;
      d.std = k.std;
    }
  }
  if (d.mean.empty()) channel_stats(d, &d.mean, &d.std);
  return d;
}

// ---- file helpers ----------------------------------------------------------------------

void bad_file(const std::string& path, const std::string& expected, const std::string& found) {
  throw Error(cat(path, ": expected ", expected, ", found ", found));
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string not_a_regular_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return errno == ENOENT ? "no such file" : cat("no readable file (", std::strerror(errno), ")");
  if (S_ISDIR(st.st_mode)) return "a folder";
  // A FIFO would block the open until something writes to it.
  if (!S_ISREG(st.st_mode)) return "not a regular file (a FIFO, socket or device)";
  return {};
}

std::vector<uint8_t> read_file(const std::string& path, const std::string& what) {
  if (const std::string problem = not_a_regular_file(path); !problem.empty()) bad_file(path, what, problem);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) bad_file(path, what, cat("no readable file (", std::strerror(errno), ")"));
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0) bytes.insert(bytes.end(), chunk, chunk + got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) bad_file(path, what, "a read error");
  return bytes;
}

std::vector<uint8_t> read_maybe_gzip(const std::string& path, const std::string& what) {
  if (const std::string problem = not_a_regular_file(path); !problem.empty()) bad_file(path, what, problem);
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) bad_file(path, what, cat("no readable file (", std::strerror(errno), ")"));
  gzbuffer(f, 1 << 17);
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> chunk(1 << 20);
  int got;
  while ((got = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()))) > 0)
    bytes.insert(bytes.end(), chunk.data(), chunk.data() + got);
  int code = Z_OK;
  const std::string message = got < 0 ? gzerror(f, &code) : "";
  // gzclose reports Z_BUF_ERROR when the input ended inside a gzip stream: a cut-short file.
  const int closed = gzclose(f);
  if (got < 0) bad_file(path, cat(what, " (a complete gzip stream)"), cat("a damaged stream: ", message));
  if (closed == Z_BUF_ERROR) bad_file(path, cat(what, " (a complete gzip stream)"), "a stream cut short (truncated)");
  return bytes;
}

}  // namespace tessera::data
