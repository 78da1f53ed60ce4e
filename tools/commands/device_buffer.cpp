#include "commands/device_buffer.hpp"

#include <cmath>
#include <limits>

#include "instantid/error.hpp"

#ifdef INSTANTID_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace instantid::cli {

namespace {

#ifdef INSTANTID_HAS_CUDA
void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(make_message(what, ": CUDA error ", cudaGetErrorString(status)));
  }
}
#endif

std::vector<std::uint8_t> encode(const HostTensor& values, DType dtype) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(values.numel()) * dtype_size(dtype));
  for (std::int64_t i = 0; i < values.numel(); ++i) {
    store_from_float(bytes.data(), dtype, i, values.data()[i]);
  }
  return bytes;
}

}  // namespace

bool cli_has_cuda() {
#ifdef INSTANTID_HAS_CUDA
  return true;
#else
  return false;
#endif
}

TensorBuffer::TensorBuffer(const std::vector<std::int64_t>& shape, DType dtype, Device device)
    : shape_(shape), dtype_(dtype), device_(device) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) count *= d;
  bytes_ = static_cast<std::size_t>(count) * dtype_size(dtype);
  if (device.type == DeviceType::kCpu) {
    host_.resize(bytes_);
    for (std::int64_t i = 0; i < count; ++i) {
      store_from_float(host_.data(), dtype, i, std::numeric_limits<float>::quiet_NaN());
    }
    data_ = host_.data();
    return;
  }
#ifdef INSTANTID_HAS_CUDA
  check_cuda(cudaSetDevice(device.index), "cudaSetDevice");
  check_cuda(cudaMalloc(&data_, bytes_ == 0 ? 1 : bytes_), "cudaMalloc");
  // 0xFF bytes are NaN in f32, f16 and bf16.
  check_cuda(cudaMemset(data_, 0xff, bytes_), "cudaMemset");
#else
  throw Error(make_message("device ", device_name(device),
                           ": got a CUDA device, expected cpu (this instantid was built without "
                           "CUDA)"));
#endif
}

TensorBuffer::TensorBuffer(const HostTensor& values, DType dtype, Device device)
    : TensorBuffer(values.shape(), dtype, device) {
  upload(values);
}

TensorBuffer::~TensorBuffer() {
#ifdef INSTANTID_HAS_CUDA
  if (device_.type == DeviceType::kCuda && data_ != nullptr) cudaFree(data_);
#endif
}

void TensorBuffer::upload(const HostTensor& values) {
  INSTANTID_CHECK(values.shape() == shape_, "upload: shape: got ", values.shape_str(),
                  ", expected ", shape_string(shape_));
  if (device_.type == DeviceType::kCpu) {
    host_ = encode(values, dtype_);
    data_ = host_.data();
    return;
  }
#ifdef INSTANTID_HAS_CUDA
  const std::vector<std::uint8_t> bytes = encode(values, dtype_);
  check_cuda(cudaMemcpy(data_, bytes.data(), bytes_, cudaMemcpyHostToDevice), "upload");
#endif
}

TensorView TensorBuffer::view() const {
  return TensorView::contiguous(data_, dtype_, device_, shape_);
}

HostTensor TensorBuffer::to_host() const {
  if (device_.type == DeviceType::kCpu) return HostTensor::from_view(view());
#ifdef INSTANTID_HAS_CUDA
  std::vector<std::uint8_t> bytes(bytes_);
  check_cuda(cudaMemcpy(bytes.data(), data_, bytes_, cudaMemcpyDeviceToHost), "download");
  return HostTensor::from_view(
      TensorView::contiguous(bytes.data(), dtype_, Device{}, shape_));
#else
  throw Error("download: built without CUDA");
#endif
}

void device_synchronize(Device device) {
#ifdef INSTANTID_HAS_CUDA
  if (device.type == DeviceType::kCuda) check_cuda(cudaDeviceSynchronize(), "synchronize");
#else
  (void)device;
#endif
}

}  // namespace instantid::cli
