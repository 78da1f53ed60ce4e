#include "instantid/model.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <system_error>
#include <thread>
#include <utility>

#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid {

namespace {

using ShapeMap = std::map<std::string, std::vector<std::int64_t>>;

constexpr std::size_t kLoadThreads = 4;  // conversion threads of load()

std::string to_k_name(int key) { return "ip_adapter." + std::to_string(key) + ".to_k_ip.weight"; }
std::string to_v_name(int key) { return "ip_adapter." + std::to_string(key) + ".to_v_ip.weight"; }

// D_out as the spec reads it: dim 1 of the first layer's to_k_ip (falls back to proj_out's
// rows when that tensor is absent, so the other problems can still be listed).
int find_output_dim(const ShapeMap& shapes, const ModelLayout& layout) {
  if (!layout.layers.empty()) {
    auto it = shapes.find(to_k_name(layout.layers[0].checkpoint_key));
    if (it != shapes.end() && it->second.size() == 2 && it->second[1] > 0) {
      return static_cast<int>(it->second[1]);
    }
  }
  auto it = shapes.find("image_proj.proj_out.weight");
  if (it != shapes.end() && it->second.size() == 2 && it->second[0] > 0) {
    return static_cast<int>(it->second[0]);
  }
  return 0;
}

// Every missing, extra or mis-shaped tensor in one Error; returns D_out.
int validate(const ShapeMap& shapes, const ModelLayout& layout, const std::string& source) {
  const int output_dim = find_output_dim(shapes, layout);
  std::vector<std::string> problems;
  if (output_dim <= 0) {
    problems.push_back(make_message(
        "cannot read D_out: ", layout.layers.empty()
                                   ? std::string("the layout has no layers")
                                   : to_k_name(layout.layers[0].checkpoint_key) +
                                         " and image_proj.proj_out.weight are missing or not 2-D"));
  }
  const ShapeMap expected =
      InstantIDModel::expected_shapes(layout, output_dim > 0 ? output_dim : 0);
  for (const auto& [name, shape] : expected) {
    auto it = shapes.find(name);
    if (it == shapes.end()) {
      problems.push_back(make_message("missing ", name, " (expected ", shape_string(shape), ")"));
    } else if (it->second != shape) {
      problems.push_back(make_message(name, ": got ", shape_string(it->second), ", expected ",
                                      shape_string(shape)));
    }
  }
  for (const auto& [name, shape] : shapes) {
    if (expected.count(name) == 0) {
      problems.push_back(make_message("unexpected ", name, " ", shape_string(shape)));
    }
  }
  if (!problems.empty()) {
    std::string message =
        make_message("InstantID checkpoint ", source, ": ", problems.size(),
                     " tensor(s) do not match the layout (", layout.num_layers(),
                     " layers, Resampler dim ", layout.dim, ", D_out ", output_dim, "):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }
  return output_dim;
}

// splitmix64: a small, well-mixed generator; values depend only on (seed, index).
struct SplitMix64 {
  std::uint64_t state;
  explicit SplitMix64(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() {  // [-1, 1), 24 random bits: exact in float
    return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
};

}  // namespace

std::uint64_t synthetic_stream(const std::string& name, std::uint64_t seed) {
  std::uint64_t h = 1469598103934665603ull ^ seed;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

HostTensor synthetic_uniform(std::vector<std::int64_t> shape, float scale, float offset,
                             std::uint64_t stream) {
  HostTensor tensor(std::move(shape));
  SplitMix64 random(stream);
  for (float& value : tensor.values()) value = offset + scale * random.uniform();
  return tensor;
}

std::map<std::string, HostTensor> InstantIDModel::synthetic_tensors(const ModelLayout& layout,
                                                                    int output_dim,
                                                                    std::uint64_t seed) {
  INSTANTID_CHECK(output_dim > 0, "synthetic_tensors output_dim: got ", output_dim,
                  ", expected > 0");
  std::map<std::string, HostTensor> tensors;
  for (const auto& [name, shape] : expected_shapes(layout, output_dim)) {
    const std::uint64_t stream = synthetic_stream(name, seed);
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (shape.size() == 2) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(shape[1]));
      tensors.emplace(name, synthetic_uniform(shape, bound, 0.0f, stream));
    } else if (shape.size() == 1 && is_bias) {
      tensors.emplace(name, synthetic_uniform(shape, 0.02f, 0.0f, stream));
    } else if (shape.size() == 1) {
      tensors.emplace(name, synthetic_uniform(shape, 0.1f, 1.0f, stream));
    } else {
      tensors.emplace(name, synthetic_uniform(shape, 1.0f, 0.0f, stream));
    }
  }
  return tensors;
}

InstantIDModel InstantIDModel::synthetic(const ModelLayout& layout, int output_dim,
                                         std::uint64_t seed) {
  return from_tensors(
      synthetic_tensors(layout, output_dim, seed), layout,
      make_message("synthetic checkpoint (deterministic random weights, seed ", seed, ")"));
}

std::map<std::string, std::vector<std::int64_t>> InstantIDModel::expected_shapes(
    const ModelLayout& layout, int output_dim) {
  INSTANTID_CHECK(output_dim >= 0, "expected_shapes output_dim: got ", output_dim,
                  ", expected >= 0");
  const std::int64_t dim = layout.dim;
  const std::int64_t inner = static_cast<std::int64_t>(layout.heads) * layout.dim_head;
  const std::int64_t ff = dim * layout.ff_mult;
  const std::int64_t d_out = output_dim;
  ShapeMap s;
  const std::string p = "image_proj.";
  s[p + "latents"] = {1, layout.num_queries, dim};
  s[p + "proj_in.weight"] = {dim, layout.embed_dim};
  s[p + "proj_in.bias"] = {dim};
  s[p + "proj_out.weight"] = {d_out, dim};
  s[p + "proj_out.bias"] = {d_out};
  s[p + "norm_out.weight"] = {d_out};
  s[p + "norm_out.bias"] = {d_out};
  for (int i = 0; i < layout.depth; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    for (const char* norm : {"0.norm1.", "0.norm2."}) {
      s[l + norm + "weight"] = {dim};
      s[l + norm + "bias"] = {dim};
    }
    s[l + "0.to_q.weight"] = {inner, dim};
    s[l + "0.to_kv.weight"] = {2 * inner, dim};
    s[l + "0.to_out.weight"] = {dim, inner};
    s[l + "1.0.weight"] = {dim};
    s[l + "1.0.bias"] = {dim};
    s[l + "1.1.weight"] = {ff, dim};
    s[l + "1.3.weight"] = {dim, ff};
  }
  for (const LayerInfo& layer : layout.layers) {
    s[to_k_name(layer.checkpoint_key)] = {layer.width, d_out};
    s[to_v_name(layer.checkpoint_key)] = {layer.width, d_out};
  }
  return s;
}

InstantIDModel InstantIDModel::load(const std::string& path, const ModelLayout& layout) {
  const CheckpointFile file = CheckpointFile::open(path);
  ShapeMap shapes;
  for (const CheckpointTensor& t : file.tensors()) shapes[t.name] = t.shape;
  InstantIDModel model;
  model.layout_ = layout;
  model.source_ = path;
  model.output_dim_ = validate(shapes, layout, path);  // before any conversion allocates
  const std::vector<CheckpointTensor>& in = file.tensors();
  if (!in.empty()) model.storage_dtype_ = in.front().dtype;
  for (const CheckpointTensor& t : in) {
    if (t.dtype != model.storage_dtype_) model.storage_dtype_ = DType::kF32;  // mixed: report f32
  }
  // Conversion is bound by page population and memory bandwidth; a few threads taking tensors
  // from a shared counter overlap them. Errors are rethrown in tensor order. If a thread cannot
  // be started, the others (at least this one) take its share.
  std::vector<HostTensor> converted(in.size());
  std::vector<std::exception_ptr> errors(in.size());
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i = next++; i < in.size(); i = next++) {
      try {
        converted[i] = in[i].to_float(true);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  const std::size_t threads = std::min<std::size_t>(
      {kLoadThreads, std::max(1u, std::thread::hardware_concurrency()), in.size()});
  std::vector<std::thread> pool;
  for (std::size_t k = 1; k < threads; ++k) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error&) {
      break;
    }
  }
  work();
  for (std::thread& t : pool) t.join();
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (errors[i]) {
      try {
        std::rethrow_exception(errors[i]);
      } catch (const Error& e) {
        throw Error(make_message("InstantID checkpoint ", path, ": ", e.what()));
      }
    }
    model.tensors_.emplace(in[i].name, std::move(converted[i]));
  }
  return model;
}

InstantIDModel InstantIDModel::from_tensors(std::map<std::string, HostTensor> tensors,
                                            const ModelLayout& layout, std::string source) {
  ShapeMap shapes;
  for (const auto& [name, t] : tensors) shapes[name] = t.shape();
  InstantIDModel model;
  model.layout_ = layout;
  model.output_dim_ = validate(shapes, layout, source);
  for (const auto& [name, t] : tensors) {
    const float* v = t.data();
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      std::uint32_t bits;
      std::memcpy(&bits, v + i, 4);
      if ((bits & 0x7f800000u) == 0x7f800000u) {
        throw Error(make_message("InstantID checkpoint ", source, ": tensor \"", name,
                                 "\": value at flat index ", i, " is ",
                                 v[i] != v[i] ? "NaN" : "Inf", ", expected finite weights"));
      }
    }
  }
  model.source_ = std::move(source);
  model.tensors_ = std::move(tensors);
  return model;
}

const HostTensor& InstantIDModel::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw Error(make_message("InstantIDModel ", source_, ": no tensor named \"", name, "\""));
  }
  return it->second;
}

const HostTensor& InstantIDModel::to_k_ip(int layer_index) const {
  INSTANTID_CHECK(layer_index >= 0 && layer_index < layout_.num_layers(),
                  "InstantIDModel::to_k_ip layer index: got ", layer_index, ", expected 0..",
                  layout_.num_layers() - 1);
  return tensor(to_k_name(layout_.layers[static_cast<std::size_t>(layer_index)].checkpoint_key));
}

const HostTensor& InstantIDModel::to_v_ip(int layer_index) const {
  INSTANTID_CHECK(layer_index >= 0 && layer_index < layout_.num_layers(),
                  "InstantIDModel::to_v_ip layer index: got ", layer_index, ", expected 0..",
                  layout_.num_layers() - 1);
  return tensor(to_v_name(layout_.layers[static_cast<std::size_t>(layer_index)].checkpoint_key));
}

}  // namespace instantid
