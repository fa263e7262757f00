// Tensors are views: a pointer, a shape (up to 4 dims, row-major, contiguous), a dtype and
// the device that owns the memory. A Tensor never owns or frees memory; a Buffer, an Arena
// or a Workspace does. Nothing moves between devices unless a copy function below is called,
// so where every byte lives is always visible in the code.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

enum class Device { CPU, CUDA };
enum class DType { F32, BF16, U8, I32 };  // BF16 is reserved for mixed precision later

const char* device_name(Device d);
size_t dtype_size(DType t);
const char* dtype_name(DType t);

struct Shape {
  static constexpr int kMaxDims = 4;
  int ndim = 0;
  std::array<int64_t, kMaxDims> dims{};

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  static Shape from(const std::vector<int64_t>& d);

  int64_t operator[](int i) const { return dims[static_cast<size_t>(i)]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "(64, 3, 32, 32)"
  std::vector<int64_t> vec() const { return std::vector<int64_t>(dims.begin(), dims.begin() + ndim); }
};

struct Tensor {
  void* ptr = nullptr;
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;

  Tensor() = default;
  Tensor(void* p, Shape s, DType t, Device d) : ptr(p), shape(s), dtype(t), device(d) {}

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool defined() const { return ptr != nullptr; }
  float* f32() const;      // checks dtype
  int32_t* i32() const;    // checks dtype
  uint8_t* u8() const;     // checks dtype
  Tensor reshape(Shape s) const;  // same data, new shape; numel must match
  std::string str() const;        // "f32(64, 10) on cuda"
};

// One owned allocation on one device (malloc'd host memory or cudaMalloc'd device memory).
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  Tensor view(Shape s, DType t = DType::F32, size_t byte_offset = 0) const;

 private:
  void release();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::CPU;
};

// A tensor together with the Buffer that holds it: for tests, tools and long-lived state.
struct OwnedTensor {
  Buffer buffer;
  Tensor t;
  OwnedTensor() = default;
  OwnedTensor(Device d, Shape s, DType dt = DType::F32);
  operator const Tensor&() const { return t; }
};

// Explicit copies. Device-side copies run on the engine stream; the host-side variants wait
// for them, because the caller reads or frees the host memory right after.
void copy(const Tensor& dst, const Tensor& src);  // any direction; shapes' numel and dtypes must match
void copy_from_host(const Tensor& dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const Tensor& src, size_t bytes);
std::vector<float> to_host_f32(const Tensor& t);
std::vector<int32_t> to_host_i32(const Tensor& t);
void from_host(const Tensor& dst, const std::vector<float>& v);
void from_host(const Tensor& dst, const std::vector<int32_t>& v);
void fill_zero(const Tensor& t);
void fill_value(const Tensor& t, float value);  // f32 only; for tests and poisoning

// Checks that name both shapes in their message.
void check_same_shape(const char* what, const Tensor& a, const Tensor& b);
void check_same_device(const char* what, const Tensor& a, const Tensor& b);

}  // namespace tessera
