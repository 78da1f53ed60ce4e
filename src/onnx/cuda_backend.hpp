#pragma once
// The CUDA backend of the executor (cuDNN convolutions, small kernels for the rest). Built only
// when the CUDA toolkit is found; executor.cpp reports an Error otherwise.

#include <memory>
#include <vector>

#include "instantid/onnx/executor.hpp"
#include "onnx/graph.hpp"

namespace instantid::onnx {

class CudaBackend {
 public:
  virtual ~CudaBackend() = default;
  // Inputs are checked float32 host tensors; outputs come back as float32 host tensors.
  virtual std::vector<HostTensor> run(const std::vector<HostTensor>& inputs) = 0;
};

// Uploads the weights once; plans (buffers, cuDNN algorithms) per distinct input shape.
std::unique_ptr<CudaBackend> make_cuda_backend(const Graph& graph, const ExecutorOptions& options);

}  // namespace instantid::onnx
