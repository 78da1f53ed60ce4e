// libFuzzer target: ONNX loading (protobuf parse, graph checks, shape rules) through
// Executor::from_bytes, then one CPU run on small deterministic inputs when the graph loads.
// Inputs are built from the declared shapes (symbolic dims = 2) and only when they are small, so a
// fuzzed graph starts small; what it asks for after that is the executor's business to bound.
// Only instantid::Error may escape.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "instantid/error.hpp"
#include "instantid/onnx/executor.hpp"

namespace {
constexpr std::int64_t kMaxInputElements = 4096;
constexpr std::int64_t kMaxInputDim = 256;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using instantid::HostTensor;
  try {
    instantid::onnx::ExecutorOptions options;
    options.max_tensor_elements = std::int64_t{1} << 22;  // 16 MB per tensor
    auto executor = instantid::onnx::Executor::from_bytes(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.onnx", options);
    std::vector<HostTensor> inputs;
    for (const auto& info : executor.inputs()) {
      std::vector<std::int64_t> shape;
      std::int64_t numel = 1;
      for (std::int64_t d : info.dims) {
        const std::int64_t extent = d < 0 ? 2 : d;
        if (extent > kMaxInputDim) return 0;
        numel *= extent;
        if (numel > kMaxInputElements) return 0;
        shape.push_back(extent);
      }
      std::vector<float> values(static_cast<std::size_t>(numel));
      for (std::size_t i = 0; i < values.size(); ++i)
        values[i] = 0.25f * static_cast<float>(static_cast<int>(i % 9) - 4);
      inputs.emplace_back(shape, std::move(values));
    }
    (void)executor.run(inputs);
  } catch (const instantid::Error&) {
  }
  return 0;
}
