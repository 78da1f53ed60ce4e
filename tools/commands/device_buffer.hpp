#pragma once
// Tensor storage for the commands that run the patch: host memory, or CUDA device memory when the
// CLI is built with CUDA and --device cuda is asked for. Values are converted to/from float32 on
// the host; the view handed to the library has the requested dtype and device.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "instantid/tensor.hpp"

namespace instantid::cli {

class TensorBuffer {
 public:
  // Allocates shape × dtype on `device` and copies `values` (float32, row-major) into it.
  TensorBuffer(const HostTensor& values, DType dtype, Device device);
  // Allocates shape × dtype on `device`, filled with NaN (so an unwritten output shows up).
  TensorBuffer(const std::vector<std::int64_t>& shape, DType dtype, Device device);
  ~TensorBuffer();
  TensorBuffer(const TensorBuffer&) = delete;
  TensorBuffer& operator=(const TensorBuffer&) = delete;

  TensorView view() const;
  // Copies the contents back into a float32 host tensor (synchronises the device).
  HostTensor to_host() const;
  // Overwrites the contents from float32 values of the same shape.
  void upload(const HostTensor& values);

 private:
  std::vector<std::int64_t> shape_;
  DType dtype_;
  Device device_;
  std::size_t bytes_ = 0;
  void* data_ = nullptr;
  std::vector<std::uint8_t> host_;
};

// True when this binary was built with CUDA.
bool cli_has_cuda();
// Waits for the device (no-op on the CPU); throws Error with the CUDA message on failure.
void device_synchronize(Device device);

}  // namespace instantid::cli
