#pragma once
// Tensors at the library boundary.
//
// TensorView: a non-owning, allocation-free description of someone else's memory (the host
//   engine's q/k/v/out, a DLPack tensor). Shape and strides are in elements, row-major by default.
// HostTensor: an owning, contiguous float32 host tensor; what the CPU reference computes with and
//   what loaders and the projection step return.

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>

#include "instantid/error.hpp"

namespace instantid {

enum class DType : std::uint8_t { kF32, kF16, kBF16 };

inline std::size_t dtype_size(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

enum class DeviceType : std::uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

inline std::string device_name(Device d) {
  return d.type == DeviceType::kCpu ? std::string("cpu") : "cuda:" + std::to_string(d.index);
}

constexpr int kMaxDims = 6;

// Shape formatted as "[2, 4096, 640]" for messages.
std::string shape_string(const std::int64_t* dims, int ndim);
inline std::string shape_string(const std::vector<std::int64_t>& dims) {
  return shape_string(dims.data(), static_cast<int>(dims.size()));
}

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device{};
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> shape{};
  std::array<std::int64_t, kMaxDims> strides{};  // in elements

  // A contiguous row-major view.
  static TensorView contiguous(void* data, DType dtype, Device device,
                               std::initializer_list<std::int64_t> shape);
  static TensorView contiguous(void* data, DType dtype, Device device,
                               const std::vector<std::int64_t>& shape);

  std::int64_t numel() const;
  std::int64_t size(int dim) const { return shape[static_cast<std::size_t>(dim)]; }
  bool is_contiguous() const;
  std::vector<std::int64_t> shape_vector() const {
    return std::vector<std::int64_t>(shape.begin(), shape.begin() + ndim);
  }
  std::string shape_str() const { return shape_string(shape.data(), ndim); }
};

// Owning contiguous float32 host tensor.
class HostTensor {
 public:
  HostTensor() = default;
  explicit HostTensor(std::vector<std::int64_t> shape, float fill = 0.0f);
  HostTensor(std::vector<std::int64_t> shape, std::vector<float> values);

  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t size(int dim) const { return shape_.at(static_cast<std::size_t>(dim)); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t numel() const { return static_cast<std::int64_t>(values_.size()); }
  float* data() { return values_.data(); }
  const float* data() const { return values_.data(); }
  std::vector<float>& values() { return values_; }
  const std::vector<float>& values() const { return values_; }
  std::string shape_str() const { return shape_string(shape_); }

  // Same values, new shape with the same element count.
  HostTensor reshaped(std::vector<std::int64_t> shape) const;

  TensorView view();
  TensorView view() const;  // for reading only; the view's data pointer is non-const by type

  // Copies any CPU view (f32/f16/bf16, any strides) into a new contiguous float32 tensor.
  static HostTensor from_view(const TensorView& view);

 private:
  std::vector<std::int64_t> shape_;
  std::vector<float> values_;
};

// Half-precision conversions (IEEE binary16 and bfloat16, round to nearest even).
float half_to_float(std::uint16_t bits);
std::uint16_t float_to_half(float value);
float bfloat16_to_float(std::uint16_t bits);
std::uint16_t float_to_bfloat16(float value);

// Reads element i (linear index into a contiguous buffer) of the given dtype as float.
float load_as_float(const void* data, DType dtype, std::int64_t i);
// Writes value into element i of the given dtype, rounding to nearest even.
void store_from_float(void* data, DType dtype, std::int64_t i, float value);

// DLPack interop (DLPack 0.6+). Import keeps no ownership; the caller keeps the DLPack tensor
// alive while the view is in use. Supported: float32/float16/bfloat16 on kDLCPU or kDLCUDA.
TensorView from_dlpack(const DLTensor& tensor);
// Export moves the tensor into a DLManagedTensor whose deleter frees it.
DLManagedTensor* to_dlpack(HostTensor tensor);

// Throws unless view has the expected rank; names the argument.
void check_rank(const TensorView& view, int ndim, const char* name);

}  // namespace instantid
