#pragma once
// InstantIDModel: the weights of an InstantID checkpoint (spec §1), validated against a layout and
// held as float32 on the host. Backends upload what they need when a patch is prepared.

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "instantid/layout.hpp"
#include "instantid/tensor.hpp"

namespace instantid {

class InstantIDModel {
 public:
  // Loads `ip-adapter.bin` (torch.save zip) or `.safetensors` (chosen by content, not by name),
  // with fp32/fp16/bf16 storage, and checks every tensor's name and shape against `layout`
  // (D_out is read from the file). Errors name the file and every missing, extra or mis-shaped
  // tensor; NaN/Inf weights are refused with the tensor's name.
  static InstantIDModel load(const std::string& path,
                             const ModelLayout& layout = ModelLayout::sdxl());

  // Builds a model from tensors already in memory, named as in a .safetensors checkpoint
  // ("image_proj.latents", "ip_adapter.1.to_k_ip.weight", ...), with the same validation.
  static InstantIDModel from_tensors(std::map<std::string, HostTensor> tensors,
                                     const ModelLayout& layout = ModelLayout::sdxl(),
                                     std::string source = "memory");

  const ModelLayout& layout() const { return layout_; }
  int output_dim() const { return output_dim_; }          // D_out: 2048 for SDXL
  DType storage_dtype() const { return storage_dtype_; }  // dtype as stored in the file
  const std::string& source() const { return source_; }   // path or "memory"

  // By flat name; throws Error naming the tensor if absent.
  const HostTensor& tensor(const std::string& name) const;
  const std::map<std::string, HostTensor>& tensors() const { return tensors_; }
  // Resampler weight "image_proj.<suffix>".
  const HostTensor& image_proj(const std::string& suffix) const {
    return tensor("image_proj." + suffix);
  }
  // [C_n, D_out] projections of layer index n (0-based, layout order).
  const HostTensor& to_k_ip(int layer_index) const;
  const HostTensor& to_v_ip(int layer_index) const;

  // Names and shapes every tensor of `layout` must have, D_out given.
  static std::map<std::string, std::vector<std::int64_t>> expected_shapes(const ModelLayout& layout,
                                                                          int output_dim);

  // Deterministic random weights for demos, tests and benchmarks (not a trained model): every
  // tensor of expected_shapes(layout, output_dim), at a trained network's scales so activations
  // stay O(1):
  //   2-D (linear) weights [out, in]     U(-1, 1) / sqrt(in)
  //   1-D names ending in ".bias"        U(-1, 1) * 0.02
  //   other 1-D (LayerNorm weights)      1 + U(-1, 1) * 0.1
  //   image_proj.latents [1, 16, dim]    U(-1, 1)
  // A tensor's values depend only on (seed, its name, its size), never on the other tensors: a
  // layout with no layers gives only the Resampler's "image_proj.*" tensors, with the same values.
  // output_dim must be > 0.
  static std::map<std::string, HostTensor> synthetic_tensors(const ModelLayout& layout,
                                                             int output_dim, std::uint64_t seed);
  // synthetic_tensors through from_tensors; source() says "synthetic checkpoint (...seed N)".
  static InstantIDModel synthetic(const ModelLayout& layout, int output_dim, std::uint64_t seed);

 private:
  ModelLayout layout_;
  int output_dim_ = 0;
  DType storage_dtype_ = DType::kF32;
  std::string source_;
  std::map<std::string, HostTensor> tensors_;
};

// The generator behind InstantIDModel::synthetic_tensors, for inputs that must be drawn the same
// way (the demo's identity and q/k/v): `shape` filled with offset + scale·U(-1, 1), 24 random
// bits per value, from the splitmix64 stream started at `stream`. synthetic_stream(name, seed) is
// the stream synthetic_tensors gives the tensor `name` (FNV-1a of the name, started from seed).
HostTensor synthetic_uniform(std::vector<std::int64_t> shape, float scale, float offset,
                             std::uint64_t stream);
std::uint64_t synthetic_stream(const std::string& name, std::uint64_t seed);

}  // namespace instantid
