// Internal to data/: one function per file format and the file helpers they share. Programs
// call load_dataset() (data/dataset.h), which picks the reader from the spec's kind.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace tessera::data {

// The one-line error of a bad input file: "PATH: expected WHAT, found WHAT".
[[noreturn]] void bad_file(const std::string& path, const std::string& expected, const std::string& found);

bool file_exists(const std::string& path);
// "" when `path` is a regular file (through symlinks); else what it is instead, for messages:
// "no such file", "a folder", "not a regular file (...)", "no readable file (<errno text>)".
std::string not_a_regular_file(const std::string& path);
bool dir_exists(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);

// The whole file; a missing or unreadable file is an Error saying what the file should hold.
std::vector<uint8_t> read_file(const std::string& path, const std::string& what);
// The whole file, inflated when it is gzip and read as-is otherwise (zlib's gzread does both).
std::vector<uint8_t> read_maybe_gzip(const std::string& path, const std::string& what);

// Readers. Each fills images, labels, shape, num_classes and class_names; load_dataset()
// sets the name and the mean / std.
Dataset read_idx(const std::string& dir, Split split, const std::string& kind);
Dataset read_cifar(const std::string& dir, Split split, int num_classes);
Dataset read_stl10(const std::string& dir, Split split);
Dataset read_folder(const std::string& dir, Split split, const DataOptions& options);

}  // namespace tessera::data
