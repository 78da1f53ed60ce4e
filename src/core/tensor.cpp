#include "instantid/tensor.hpp"

#include <dlpack/dlpack.h>

#include <Eigen/Core>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

namespace instantid {

std::string shape_string(const std::int64_t* dims, int ndim) {
  std::ostringstream out;
  out << '[';
  for (int i = 0; i < ndim; ++i) out << (i ? ", " : "") << dims[i];
  out << ']';
  return out.str();
}

namespace {

std::int64_t checked_numel(const std::int64_t* dims, std::size_t ndim) {
  std::int64_t n = 1;
  for (std::size_t i = 0; i < ndim; ++i) {
    INSTANTID_CHECK(dims[i] >= 0, "tensor shape: got negative dimension ",
                    shape_string(dims, static_cast<int>(ndim)), ", expected sizes >= 0");
    INSTANTID_CHECK(dims[i] == 0 || n <= std::numeric_limits<std::int64_t>::max() / dims[i],
                    "tensor shape: element count of ", shape_string(dims, static_cast<int>(ndim)),
                    " overflows int64");
    n *= dims[i];
  }
  return n;
}

void fill_view_shape(TensorView& v, const std::int64_t* dims, std::size_t ndim) {
  INSTANTID_CHECK(ndim <= static_cast<std::size_t>(kMaxDims), "tensor rank: got ", ndim,
                  ", expected at most ", kMaxDims);
  checked_numel(dims, ndim);
  v.ndim = static_cast<int>(ndim);
  std::int64_t stride = 1;
  for (std::size_t i = ndim; i-- > 0;) {
    v.shape[i] = dims[i];
    v.strides[i] = stride;
    stride *= dims[i];
  }
}

}  // namespace

TensorView TensorView::contiguous(void* data, DType dtype, Device device,
                                  std::initializer_list<std::int64_t> shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  fill_view_shape(v, shape.begin(), shape.size());
  return v;
}

TensorView TensorView::contiguous(void* data, DType dtype, Device device,
                                  const std::vector<std::int64_t>& shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  fill_view_shape(v, shape.data(), shape.size());
  return v;
}

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[static_cast<std::size_t>(i)];
  return n;
}

bool TensorView::is_contiguous() const {
  std::int64_t stride = 1;
  for (int i = ndim; i-- > 0;) {
    const auto d = static_cast<std::size_t>(i);
    if (shape[d] != 1 && strides[d] != stride) return false;
    stride *= shape[d];
  }
  return true;
}

HostTensor::HostTensor(std::vector<std::int64_t> shape, float fill) : shape_(std::move(shape)) {
  values_.assign(static_cast<std::size_t>(checked_numel(shape_.data(), shape_.size())), fill);
}

HostTensor::HostTensor(std::vector<std::int64_t> shape, std::vector<float> values)
    : shape_(std::move(shape)), values_(std::move(values)) {
  const std::int64_t n = checked_numel(shape_.data(), shape_.size());
  if (n != static_cast<std::int64_t>(values_.size()))
    throw_mismatch("HostTensor values for shape " + shape_str(), values_.size(), n);
}

HostTensor HostTensor::reshaped(std::vector<std::int64_t> shape) const {
  return HostTensor(std::move(shape), values_);
}

TensorView HostTensor::view() {
  return TensorView::contiguous(values_.data(), DType::kF32, Device{}, shape_);
}

TensorView HostTensor::view() const {
  return TensorView::contiguous(const_cast<float*>(values_.data()), DType::kF32, Device{}, shape_);
}

HostTensor HostTensor::from_view(const TensorView& view) {
  INSTANTID_CHECK(view.device.type == DeviceType::kCpu, "HostTensor::from_view: got device ",
                  device_name(view.device), ", expected cpu");
  INSTANTID_CHECK(view.data != nullptr || view.numel() == 0,
                  "HostTensor::from_view: got a null data pointer for shape ", view.shape_str());
  HostTensor out(view.shape_vector());
  std::array<std::int64_t, kMaxDims> index{};
  for (std::int64_t linear = 0; linear < out.numel(); ++linear) {
    std::int64_t offset = 0;
    for (int d = 0; d < view.ndim; ++d) offset += index[d] * view.strides[d];
    out.values_[static_cast<std::size_t>(linear)] = load_as_float(view.data, view.dtype, offset);
    for (int d = view.ndim; d-- > 0;) {
      if (++index[d] < view.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

float half_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}

std::uint16_t float_to_half(float value) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(value));
}

float bfloat16_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits));
}

std::uint16_t float_to_bfloat16(float value) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(value));
}

float load_as_float(const void* data, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(data)[i];
    case DType::kF16: return half_to_float(static_cast<const std::uint16_t*>(data)[i]);
    case DType::kBF16: return bfloat16_to_float(static_cast<const std::uint16_t*>(data)[i]);
  }
  return 0.0f;
}

void store_from_float(void* data, DType dtype, std::int64_t i, float value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(data)[i] = value; break;
    case DType::kF16: static_cast<std::uint16_t*>(data)[i] = float_to_half(value); break;
    case DType::kBF16: static_cast<std::uint16_t*>(data)[i] = float_to_bfloat16(value); break;
  }
}

TensorView from_dlpack(const DLTensor& t) {
  TensorView v;
  const DLDataType dt = t.dtype;
  INSTANTID_CHECK(dt.lanes == 1, "from_dlpack: got ", int(dt.lanes), " lanes, expected 1");
  if (dt.code == kDLFloat && dt.bits == 32) {
    v.dtype = DType::kF32;
  } else if (dt.code == kDLFloat && dt.bits == 16) {
    v.dtype = DType::kF16;
  } else if (dt.code == kDLBfloat && dt.bits == 16) {
    v.dtype = DType::kBF16;
  } else {
    throw Error(make_message("from_dlpack: got dtype code ", int(dt.code), " bits ", int(dt.bits),
                             ", expected float32, float16 or bfloat16"));
  }
  if (t.device.device_type == kDLCPU) {
    v.device = Device{DeviceType::kCpu, 0};
  } else if (t.device.device_type == kDLCUDA) {
    v.device = Device{DeviceType::kCuda, t.device.device_id};
  } else {
    throw Error(make_message("from_dlpack: got device type ", int(t.device.device_type),
                             ", expected kDLCPU (1) or kDLCUDA (2)"));
  }
  INSTANTID_CHECK(t.ndim >= 0 && t.ndim <= kMaxDims, "from_dlpack: got rank ", t.ndim,
                  ", expected 0..", kMaxDims);
  fill_view_shape(v, t.shape, static_cast<std::size_t>(t.ndim));
  if (t.strides != nullptr) {
    for (int i = 0; i < t.ndim; ++i) v.strides[i] = t.strides[i];
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  return v;
}

namespace {

struct ExportedTensor {
  HostTensor tensor;
  std::vector<std::int64_t> shape;
  DLManagedTensor managed{};
};

}  // namespace

DLManagedTensor* to_dlpack(HostTensor tensor) {
  auto* holder = new ExportedTensor{std::move(tensor), {}, {}};
  holder->shape = holder->tensor.shape();
  DLTensor& t = holder->managed.dl_tensor;
  t.data = holder->tensor.data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = holder->tensor.ndim();
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.shape = holder->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  holder->managed.manager_ctx = holder;
  holder->managed.deleter = [](DLManagedTensor* self) {
    delete static_cast<ExportedTensor*>(self->manager_ctx);
  };
  return &holder->managed;
}

void check_rank(const TensorView& view, int ndim, const char* name) {
  if (view.ndim != ndim)
    throw_mismatch(make_message(name, " rank (shape ", view.shape_str(), ")"), view.ndim, ndim);
}

}  // namespace instantid
