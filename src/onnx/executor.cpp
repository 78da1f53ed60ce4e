#include "instantid/onnx/executor.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "instantid/error.hpp"
#include "onnx/cpu_ops.hpp"
#include "onnx/cuda_backend.hpp"
#include "onnx/graph.hpp"

namespace instantid::onnx {

struct Executor::Impl {
  Graph graph;
  ExecutorOptions options;
  std::unique_ptr<CudaBackend> cuda;
};

namespace {

void check_inputs(const Graph& g, const std::vector<HostTensor>& inputs) {
  INSTANTID_CHECK(inputs.size() == g.inputs.size(), g.path, ": run: got ", inputs.size(),
                  " inputs, expected ", g.inputs.size());
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const ValueInfo& info = g.inputs[k];
    const HostTensor& t = inputs[k];
    INSTANTID_CHECK(t.numel() <= TensorElementLimit::current(), g.path, ": input '", info.name,
                    "': got shape ", t.shape_str(), ", more elements than the limit of ",
                    TensorElementLimit::current(), " (ExecutorOptions::max_tensor_elements)");
    if (!info.dims.empty()) {
      INSTANTID_CHECK(static_cast<std::size_t>(t.ndim()) == info.dims.size(), g.path,
                      ": input '", info.name, "': got shape ", t.shape_str(), ", expected rank ",
                      info.dims.size(), " ", shape_string(info.dims), " (-1 = any)");
      for (std::size_t d = 0; d < info.dims.size(); ++d) {
        INSTANTID_CHECK(info.dims[d] < 0 || info.dims[d] == t.shape()[d], g.path, ": input '",
                        info.name, "': got shape ", t.shape_str(), ", expected ",
                        shape_string(info.dims), " (-1 = any)");
      }
    }
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      const float v = t.data()[i];
      INSTANTID_CHECK(std::isfinite(v), g.path, ": input '", info.name, "': element ", i, " is ",
                      v, ", expected finite values");
    }
  }
}

std::vector<HostTensor> run_cpu(const Graph& g, const std::vector<HostTensor>& inputs) {
  std::vector<Tensor> values(g.value_names.size());
  std::vector<bool> ready(g.value_names.size(), false);
  for (const auto& [id, t] : g.initializers) ready[static_cast<std::size_t>(id)] = true;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const auto id = static_cast<std::size_t>(g.input_ids[k]);
    values[id] = Tensor::floats(inputs[k].shape(), inputs[k].values());
    ready[id] = true;
  }
  auto get = [&](int id) -> const Tensor* {
    if (id < 0) return nullptr;
    auto it = g.initializers.find(id);
    if (it != g.initializers.end()) return &it->second;
    return &values[static_cast<std::size_t>(id)];
  };
  // Frees intermediates after their last reader.
  auto free_dead = [&](const Node& node, std::size_t n) {
    for (int id : node.inputs) {
      if (id >= 0 && g.last_use[static_cast<std::size_t>(id)] == static_cast<int>(n) &&
          !g.initializers.count(id)) {
        values[static_cast<std::size_t>(id)] = Tensor();
      }
    }
  };
  std::vector<const Tensor*> in, act_in;
  for (std::size_t n = 0; n < g.nodes.size(); ++n) {
    const Node& node = g.nodes[n];
    in.clear();
    for (int id : node.inputs) in.push_back(get(id));
    // A Conv whose only reader is the next node, a Relu or Clip: one pass writes the activation.
    if (node.op == Op::kConv && n + 1 < g.nodes.size()) {
      const Node& act = g.nodes[n + 1];
      const int y_id = node.outputs[0];
      float lo = 0.0f, hi = 0.0f;
      act_in.clear();
      for (int id : act.inputs) act_in.push_back(get(id));
      if ((act.op == Op::kRelu || act.op == Op::kClip) && act.inputs[0] == y_id &&
          g.last_use[static_cast<std::size_t>(y_id)] == static_cast<int>(n + 1) &&
          std::count(act.inputs.begin(), act.inputs.end(), y_id) == 1 &&
          activation_bounds(act, g.opset, act_in, &lo, &hi)) {
        try {
          values[static_cast<std::size_t>(act.outputs[0])] = run_cpu_conv_clamped(node, in, lo, hi);
        } catch (const Error& e) {
          throw Error(make_message(g.path, ": ", e.what()));
        }
        free_dead(node, n);
        free_dead(act, n + 1);
        ++n;
        continue;
      }
    }
    // The first input's storage may be reused when this node is its last reader.
    Tensor* reusable = nullptr;
    if (!node.inputs.empty() && node.inputs[0] >= 0) {
      const int id0 = node.inputs[0];
      const bool dead = g.last_use[static_cast<std::size_t>(id0)] == static_cast<int>(n) &&
                        !g.initializers.count(id0) &&
                        std::count(node.inputs.begin(), node.inputs.end(), id0) == 1;
      if (dead) reusable = &values[static_cast<std::size_t>(id0)];
    }
    std::vector<Tensor> out;
    try {
      out = run_cpu_node(node, g.opset, in, reusable);
    } catch (const Error& e) {
      throw Error(make_message(g.path, ": ", e.what()));
    }
    for (std::size_t k = 0; k < node.outputs.size(); ++k) {
      if (node.outputs[k] >= 0) values[static_cast<std::size_t>(node.outputs[k])] = std::move(out[k]);
    }
    free_dead(node, n);
  }
  std::vector<HostTensor> result;
  for (int id : g.output_ids) {
    const Tensor& t = *get(id);
    if (t.type == ElemType::kFloat) {
      result.emplace_back(t.shape, t.f);
    } else {
      std::vector<float> f(t.i.begin(), t.i.end());
      result.emplace_back(t.shape, std::move(f));
    }
  }
  return result;
}

}  // namespace

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() = default;
Executor::Executor(Executor&&) noexcept = default;
Executor& Executor::operator=(Executor&&) noexcept = default;

Executor Executor::load(const std::string& path, const ExecutorOptions& options) {
  struct stat st {};
  INSTANTID_CHECK(::stat(path.c_str(), &st) == 0, "onnx: cannot open '", path,
                  "': no such file");
  INSTANTID_CHECK(static_cast<std::int64_t>(st.st_size) < kMaxModelBytes, path, ": file of ",
                  st.st_size, " bytes exceeds the 2 GiB limit of an .onnx protobuf");
  std::ifstream file(path, std::ios::binary);
  INSTANTID_CHECK(file.good(), "onnx: cannot read '", path, "'");
  std::ostringstream bytes;
  bytes << file.rdbuf();
  return from_bytes(bytes.str(), path, options);
}

Executor Executor::from_bytes(const std::string& bytes, const std::string& name,
                              const ExecutorOptions& options) {
  INSTANTID_CHECK(options.max_tensor_elements > 0, name, ": max_tensor_elements: got ",
                  options.max_tensor_elements, ", expected > 0");
  auto impl = std::make_unique<Impl>();
  impl->graph = parse_model(bytes, name);
  impl->options = options;
  if (options.device.type == DeviceType::kCuda) {
    INSTANTID_CHECK(options.cuda_dtype == DType::kF32 || options.cuda_dtype == DType::kF16, name,
                    ": cuda_dtype: got ", dtype_name(options.cuda_dtype), ", expected f32 or f16");
#ifdef INSTANTID_ONNX_HAS_CUDA
    impl->cuda = make_cuda_backend(impl->graph, options);
#else
    throw Error(make_message(name, ": device ", device_name(options.device),
                             " requested, but this build has no CUDA backend (built without the "
                             "CUDA toolkit); use the cpu device"));
#endif
  }
  return Executor(std::move(impl));
}

const std::vector<ValueInfo>& Executor::inputs() const { return impl_->graph.inputs; }
const std::vector<ValueInfo>& Executor::outputs() const { return impl_->graph.outputs; }
const std::string& Executor::path() const { return impl_->graph.path; }

std::vector<std::string> Executor::node_names(std::size_t count) const {
  std::vector<std::string> names;
  for (std::size_t k = 0; k < count && k < impl_->graph.nodes.size(); ++k) {
    names.push_back(impl_->graph.nodes[k].name);
  }
  return names;
}

std::vector<HostTensor> Executor::run(const std::vector<HostTensor>& inputs) {
  const TensorElementLimit limit(impl_->options.max_tensor_elements);
  check_inputs(impl_->graph, inputs);
  if (impl_->cuda) return impl_->cuda->run(inputs);
  return run_cpu(impl_->graph, inputs);
}

}  // namespace instantid::onnx
