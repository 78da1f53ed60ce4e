#pragma once
// A graph executor for the ONNX models of the face pipeline (SCRFD detectors, ArcFace/IResNet
// and MobileFaceNet recognisers), reading the user's .onnx files with ONNX's own protobuf schema.
// Shapes are inferred at run time from the actual inputs; declared output shapes are not trusted.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "instantid/tensor.hpp"

namespace instantid::onnx {

struct ValueInfo {
  std::string name;
  // Declared dims; -1 where the dim is symbolic or unknown (see dim_params).
  std::vector<std::int64_t> dims;
  std::vector<std::string> dim_params;  // "" where the dim is a number
};

struct ExecutorOptions {
  Device device{};               // cpu, or cuda:N (cuDNN backend)
  DType cuda_dtype = DType::kF32;  // f32 or f16 compute on the CUDA backend
  // Elements of any one tensor the CPU backend creates during run() (inputs, intermediates,
  // outputs): a graph whose shapes grow past it fails with an Error before allocating.
  // 2^28 float32 = 1 GiB; the face models need under 2^23 at 640 × 640.
  std::int64_t max_tensor_elements = std::int64_t{1} << 28;
  // CUDA backend: replay each per-shape plan as a CUDA graph after its first run (falls back to
  // plain launches when capture fails). Results are identical either way.
  bool cuda_graph = true;
};

class Executor {
 public:
  // Parses and checks the whole graph up front: an unsupported op or attribute is an Error naming
  // the node, the op and the attribute.
  static Executor load(const std::string& path, const ExecutorOptions& options = {});
  static Executor from_bytes(const std::string& bytes, const std::string& name,
                             const ExecutorOptions& options = {});
  ~Executor();
  Executor(Executor&&) noexcept;
  Executor& operator=(Executor&&) noexcept;

  const std::vector<ValueInfo>& inputs() const;   // graph inputs that are not initializers
  const std::vector<ValueInfo>& outputs() const;  // in graph order
  // Names of the first `count` nodes in graph order (insightface inspects graph.node[:8]).
  std::vector<std::string> node_names(std::size_t count) const;
  const std::string& path() const;

  // Runs the graph on float32 inputs (one per graph input, in order; NCHW host tensors) and
  // returns every graph output as float32, in graph order, with its actual shape.
  std::vector<HostTensor> run(const std::vector<HostTensor>& inputs);

  struct Impl;

 private:
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace instantid::onnx
