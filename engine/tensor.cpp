#include "engine/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/check.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "kernels/elementwise.h"

#if TESSERA_CUDA
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::U8: return "u8";
    case DType::I32: return "i32";
  }
  return "?";
}

Shape::Shape(std::initializer_list<int64_t> d) {
  TS_CHECK(d.size() <= kMaxDims, "a shape has at most ", kMaxDims, " dims, found ", d.size());
  for (int64_t v : d) dims[static_cast<size_t>(ndim++)] = v;
}

Shape Shape::from(const std::vector<int64_t>& d) {
  TS_CHECK(d.size() <= kMaxDims, "a shape has at most ", kMaxDims, " dims, found ", d.size());
  Shape s;
  for (int64_t v : d) s.dims[static_cast<size_t>(s.ndim++)] = v;
  return s;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= dims[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[static_cast<size_t>(i)] != o.dims[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "(";
  for (int i = 0; i < ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[static_cast<size_t>(i)]);
  }
  return s + ")";
}

float* Tensor::f32() const {
  TS_CHECK(dtype == DType::F32, "expected an f32 tensor, found ", str());
  return static_cast<float*>(ptr);
}
int32_t* Tensor::i32() const {
  TS_CHECK(dtype == DType::I32, "expected an i32 tensor, found ", str());
  return static_cast<int32_t*>(ptr);
}
uint8_t* Tensor::u8() const {
  TS_CHECK(dtype == DType::U8, "expected a u8 tensor, found ", str());
  return static_cast<uint8_t*>(ptr);
}

Tensor Tensor::reshape(Shape s) const {
  TS_CHECK(s.numel() == numel(), "reshape ", shape.str(), " to ", s.str(), ": element counts differ");
  return Tensor(ptr, s, dtype, device);
}

std::string Tensor::str() const {
  return cat(dtype_name(dtype), shape.str(), " on ", device_name(device));
}

// ---- Buffer ----------------------------------------------------------------------------

Buffer::Buffer(Device device, size_t bytes) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::CPU) {
    // 64-byte alignment for vector loads; round the size up as aligned_alloc requires.
    ptr_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!ptr_) throw Error(cat("out of host memory allocating ", bytes, " bytes"));
  } else {
#if TESSERA_CUDA
    CUDA_CHECK(cudaMalloc(&ptr_, bytes));
#else
    no_cuda("Buffer");
#endif
  }
}

void Buffer::release() {
  if (!ptr_) return;
  if (device_ == Device::CPU) {
    std::free(ptr_);
  } else {
#if TESSERA_CUDA
    // cudaFree waits for all work queued on the device, so a buffer freed while earlier kernels
    // still read it (a workspace spill, a scratch region being regrown) is safe; a
    // stream-ordered allocator (cudaFreeAsync) would have to be given the engine stream here.
    // No check (destructors must not throw), but a non-sticky error is cleared so that the
    // next kernel's launch check does not report it as its own.
    if (cudaFree(ptr_) != cudaSuccess) (void)cudaGetLastError();
#endif
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), device_(o.device_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    device_ = o.device_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

Tensor Buffer::view(Shape s, DType t, size_t byte_offset) const {
  TS_CHECK(byte_offset + static_cast<size_t>(s.numel()) * dtype_size(t) <= bytes_, "view ", s.str(),
           " at byte ", byte_offset, " does not fit a buffer of ", bytes_, " bytes");
  return Tensor(static_cast<char*>(ptr_) + byte_offset, s, t, device_);
}

OwnedTensor::OwnedTensor(Device d, Shape s, DType dt)
    : buffer(d, static_cast<size_t>(s.numel()) * dtype_size(dt)), t(buffer.view(s, dt)) {}

// ---- copies ----------------------------------------------------------------------------

void copy(const Tensor& dst, const Tensor& src) {
  TS_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "copy ", src.str(), " into ",
           dst.str(), ": dtype or element count differ");
  if (src.bytes() == 0) return;
  // Timed like a kernel in a profile, on the device that does the work.
  profile::KernelScope scope("copy", dst.device == Device::CUDA ? Device::CUDA : src.device);
  if (scope.timed()) scope.set_cost({2.0 * static_cast<double>(src.bytes()), 0.0});
  if (dst.device == Device::CPU && src.device == Device::CPU) {
    std::memmove(dst.ptr, src.ptr, src.bytes());
    return;
  }
#if TESSERA_CUDA
  CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, src.bytes(), cudaMemcpyDefault,
                             kernels::cuda::runtime().stream));
  if (dst.device == Device::CPU || src.device == Device::CPU) {
    CUDA_CHECK(cudaStreamSynchronize(kernels::cuda::runtime().stream));
    count_host_wait();
  }
#else
  no_cuda("copy");
#endif
}

void copy_from_host(const Tensor& dst, const void* src, size_t bytes) {
  TS_CHECK(bytes == dst.bytes(), "copy_from_host: ", bytes, " bytes into ", dst.str());
  copy(dst, Tensor(const_cast<void*>(src), dst.shape, dst.dtype, Device::CPU));
}

void copy_to_host(void* dst, const Tensor& src, size_t bytes) {
  TS_CHECK(bytes == src.bytes(), "copy_to_host: ", src.str(), " into ", bytes, " bytes");
  copy(Tensor(dst, src.shape, src.dtype, Device::CPU), src);
}

std::vector<float> to_host_f32(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  TS_CHECK(t.dtype == DType::F32, "to_host_f32 of ", t.str());
  copy_to_host(v.data(), t, t.bytes());
  return v;
}

std::vector<int32_t> to_host_i32(const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  TS_CHECK(t.dtype == DType::I32, "to_host_i32 of ", t.str());
  copy_to_host(v.data(), t, t.bytes());
  return v;
}

void from_host(const Tensor& dst, const std::vector<float>& v) {
  TS_CHECK(dst.dtype == DType::F32, "from_host f32 into ", dst.str());
  copy_from_host(dst, v.data(), v.size() * sizeof(float));
}

void from_host(const Tensor& dst, const std::vector<int32_t>& v) {
  TS_CHECK(dst.dtype == DType::I32, "from_host i32 into ", dst.str());
  copy_from_host(dst, v.data(), v.size() * sizeof(int32_t));
}

void fill_zero(const Tensor& t) {
  if (t.bytes() == 0) return;
  profile::KernelScope scope("fill_zero", t.device);
  if (scope.timed()) scope.set_cost({static_cast<double>(t.bytes()), 0.0});
  if (t.device == Device::CPU) {
    std::memset(t.ptr, 0, t.bytes());
    return;
  }
#if TESSERA_CUDA
  CUDA_CHECK(cudaMemsetAsync(t.ptr, 0, t.bytes(), kernels::cuda::runtime().stream));
#else
  no_cuda("fill_zero");
#endif
}

void fill_value(const Tensor& t, float value) {
  TS_DISPATCH(t.device, fill, t.f32(), t.numel(), value);
}

void check_same_shape(const char* what, const Tensor& a, const Tensor& b) {
  TS_CHECK(a.shape == b.shape, what, ": shapes differ, ", a.shape.str(), " vs ", b.shape.str());
}

void check_same_device(const char* what, const Tensor& a, const Tensor& b) {
  TS_CHECK(a.device == b.device, what, ": tensors on different devices, ", a.str(), " vs ", b.str());
}

}  // namespace tessera
