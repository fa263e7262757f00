// An image folder: one sub-folder per class, PNG / JPEG / BMP files decoded by stb_image.
//
//   DIR/<class>/*.png                       the train split (no test split)
//   DIR/train/<class>/*, DIR/test/<class>/* both splits; classes are train's sub-folders
//   DIR/unlabeled/*  (or, without it, every image under DIR's class folders and DIR itself)
//                                           the unlabeled split, for self-supervised runs
//
// Classes are numbered in sorted sub-folder order. Each image is centre-cropped to a square
// and resized to DataOptions::image_size with stb_image_resize's Catmull-Rom filter (PIL's
// bicubic; its support widens when shrinking, so small outputs do not alias), giving
// torchvision's Resize(S) + CenterCrop(S) framing. Files with other extensions, and hidden
// files and folders (names starting with '.'), are ignored.
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "data/readers.h"
#include "engine/check.h"

namespace tessera::data {

namespace fs = std::filesystem;

namespace {

// 8192 x 8192: larger images are rejected before decoding (every image is resized to
// DataOptions::image_size, 32 in the programs, anyway).
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

std::vector<std::string> sorted_entries(const std::string& dir, bool directories) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // Hidden entries (.git, .ipynb_checkpoints, macOS's ._x.png) are neither classes nor images.
    if (name.empty() || name[0] == '.') continue;
    std::error_code kind;  // a symlink loop, say; a dangling link is simply not a file
    const bool wanted = directories ? it->is_directory(kind) : (it->is_regular_file(kind) && is_image_file(it->path()));
    if (kind) bad_file(it->path().string(), "a readable file or folder", kind.message());
    if (wanted) out.push_back(name);
  }
  if (ec) bad_file(dir, "a readable folder", ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

// Decodes one file into (C, S, S) at `out`. Returns "" or the one-line error.
std::string decode(const std::string& path, int channels, int side, uint8_t* out) {
  int w = 0, h = 0, file_channels = 0;
  // The header first: a few damaged bytes can claim a huge image, which stb_image would then
  // allocate and try to read pixel by pixel (tests/fuzz/folder_fuzz.cpp found a 68-byte BMP
  // claiming 6 x 13.8 million pixels). No PNG, JPEG or BMP packs more than about a thousand
  // pixels into one byte (deflate's limit is 1032:1), so 2048 per byte bounds any real file.
  if (stbi_info(path.c_str(), &w, &h, &file_channels)) {
    std::error_code ec;
    const uintmax_t file_bytes = fs::file_size(path, ec);
    const int64_t pixels = int64_t{w} * h;
    if (pixels > kMaxImagePixels)
      return cat(path, ": expected an image of at most ", kMaxImagePixels, " pixels, found ", w, "x", h);
    if (!ec && static_cast<uintmax_t>(pixels) > 2048 * file_bytes)
      return cat(path, ": expected an image its file can hold, found a header claiming ", w, "x", h, " pixels in ",
                 file_bytes, " bytes (damaged)");
  }
  uint8_t* pixels = stbi_load(path.c_str(), &w, &h, &file_channels, channels);
  if (!pixels)
    return cat(path, ": expected a PNG, JPEG or BMP image, found undecodable data (",
               stbi_failure_reason() ? stbi_failure_reason() : "unknown", ")");
  if (w <= 0 || h <= 0) {  // stb_image decodes a BMP of height 0 (tests/fuzz/folder_fuzz.cpp)
    stbi_image_free(pixels);
    return cat(path, ": expected an image with pixels, found ", w, "x", h);
  }
  const int crop = std::min(w, h);
  const int x0 = (w - crop) / 2, y0 = (h - crop) / 2;
  std::vector<uint8_t> resized(static_cast<size_t>(side) * side * channels);
  // Catmull-Rom (PIL's bicubic), not the triangle filter: Debian's stb_image_resize fails an
  // assertion (total < 1.1f, an abort) when it shrinks with the triangle filter from 41-43 and
  // many other sides to 32 (tests/fuzz/folder_fuzz.cpp found it; a 43x43 PNG is enough).
  // Box, cubic B-spline, Catmull-Rom and Mitchell pass every side from 1 to 448 into 8..96.
  const int ok = stbir_resize_uint8_generic(pixels + (int64_t{y0} * w + x0) * channels, crop, crop,
                                            w * channels, resized.data(), side, side, side * channels, channels,
                                            STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_FILTER_CATMULLROM,
                                            STBIR_COLORSPACE_LINEAR, nullptr);
  stbi_image_free(pixels);
  if (!ok) return cat(path, ": expected an image stb_image_resize can scale, found ", w, "x", h);
  // Interleaved (H, W, C) -> planar (C, H, W).
  const int64_t plane = int64_t{side} * side;
  for (int64_t k = 0; k < plane; ++k)
    for (int c = 0; c < channels; ++c) out[c * plane + k] = resized[static_cast<size_t>(k * channels + c)];
  return "";
}

}  // namespace

Dataset read_folder(const std::string& path, Split split, const DataOptions& options) {
  if (options.channels != 1 && options.channels != 3)
    throw Error(cat("folder ", path, ": expected 1 or 3 channels, found ", options.channels));
  if (options.image_size < 1) throw Error(cat("folder ", path, ": expected an image size >= 1, found ", options.image_size));
  if (!dir_exists(path)) bad_file(path, "an image folder", "no such folder");

  const bool has_splits = dir_exists(join_path(path, "train")) || dir_exists(join_path(path, "test"));
  const std::string train_root = has_splits ? join_path(path, "train") : path;
  // Without train/test folders, DIR/unlabeled sits beside the class folders: it is the unlabeled
  // split's source, not a class.
  auto class_folders = [&](const std::string& root) {
    std::vector<std::string> subs = sorted_entries(root, true);
    if (!has_splits) subs.erase(std::remove(subs.begin(), subs.end(), "unlabeled"), subs.end());
    return subs;
  };
  const std::vector<std::string> classes =
      dir_exists(train_root) ? class_folders(train_root) : std::vector<std::string>{};

  // (file, label) pairs in a fixed order: class by class, files sorted by name.
  std::vector<std::pair<std::string, int32_t>> files;
  if (split == Split::Unlabeled) {
    std::string root = join_path(path, "unlabeled");
    if (!dir_exists(root)) root = train_root;
    if (!dir_exists(root)) bad_file(root, "a folder of unlabeled images", "no such folder");
    for (const std::string& f : sorted_entries(root, false)) files.push_back({join_path(root, f), -1});
    for (const std::string& sub : sorted_entries(root, true))
      for (const std::string& f : sorted_entries(join_path(root, sub), false))
        files.push_back({join_path(join_path(root, sub), f), -1});
    if (files.empty()) bad_file(root, "images for the unlabeled split (in it or its sub-folders)", "none");
  } else {
    const std::string root = split == Split::Train ? train_root : join_path(path, "test");
    if (!dir_exists(root))
      bad_file(root, cat("a ", split_name(split), " folder with one sub-folder per class"), "no such folder");
    if (classes.empty()) bad_file(train_root, "one sub-folder per class", "no sub-folders");
    for (const std::string& sub : class_folders(root)) {
      const auto it = std::find(classes.begin(), classes.end(), sub);
      if (it == classes.end())
        bad_file(join_path(root, sub), cat("a class of ", train_root), "a class the train split does not have");
      const std::vector<std::string> names = sorted_entries(join_path(root, sub), false);
      if (names.empty()) bad_file(join_path(root, sub), "at least one .png, .jpg, .jpeg or .bmp image", "none");
      for (const std::string& f : names)
        files.push_back({join_path(join_path(root, sub), f), static_cast<int32_t>(it - classes.begin())});
    }
  }
  if (files.empty()) bad_file(path, cat("images for the ", split_name(split), " split"), "none");

  Dataset d;
  d.size = static_cast<int64_t>(files.size());
  d.channels = options.channels;
  d.height = d.width = options.image_size;
  d.num_classes = static_cast<int>(classes.size());
  d.class_names = classes;
  d.images.resize(static_cast<size_t>(d.size * d.image_bytes()));
  if (split != Split::Unlabeled)
    for (const auto& f : files) d.labels.push_back(f.second);

  // Decoding dominates; images are independent. Errors are collected and the first one (in
  // file order, so the message does not depend on thread timing) is thrown after the loop.
  std::vector<std::string> errors(files.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < d.size; ++i)
    errors[static_cast<size_t>(i)] = decode(files[static_cast<size_t>(i)].first, d.channels, d.width,
                                            d.images.data() + i * d.image_bytes());
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(e);
  return d;
}

}  // namespace tessera::data
