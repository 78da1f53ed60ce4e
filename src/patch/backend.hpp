#pragma once
// Internal: what AttentionPatch asks of a backend. The front end (src/patch/attention_patch.cpp)
// validates every argument, resolves the layer index and which identities are active, and keeps the
// step bookkeeping; a backend only computes.

#include <cstddef>
#include <memory>
#include <vector>

#include "instantid/patch.hpp"

namespace instantid::detail {

// One identity as the front end hands it to a backend: host float32 data, prepared once.
struct IdentitySpec {
  ImageTokens tokens;    // cond/uncond [1, T, D_out], T = 16·k
  PatchOptions options;  // weight, scaling, mask (validated)
  SigmaRange range;
};

class PatchBackend {
 public:
  virtual ~PatchBackend() = default;
  // Runs the Resampler on cond_input and uncond_input ([k, 1, E] each, already combined and with
  // the noise drawn) giving cond/uncond [1, 16·k, D_out] (k Resampler rows concatenated on the
  // token axis). The CPU backend runs the reference; the CUDA backend its GPU Resampler.
  virtual ImageTokens project(const InstantIDModel& model, const HostTensor& cond_input,
                              const HostTensor& uncond_input) = 0;
  // Computes and keeps the ip K/V of every layer for this identity (K_c, V_c, K_u, V_u [T, C_n]),
  // with the embeds_scaling transform applied.
  virtual void add_identity(const InstantIDModel& model, const IdentitySpec& identity) = 0;
  virtual void prepare_resolution(int original_height, int original_width) = 0;
  // out = (include_text ? Attn(q,k,v) : out) + Σ_{i: active[i]} ip term of identity i at layer.
  // `call` has been validated: shapes agree with the layer's width, devices/dtypes supported.
  virtual void run(const AttentionCall& call, int layer_index, bool include_text,
                   const std::vector<char>& active) = 0;
  virtual std::size_t device_bytes() const = 0;
};

std::unique_ptr<PatchBackend> make_cpu_backend(const ModelLayout& layout);
// Throws Error when the library was built without CUDA or no device is visible.
std::unique_ptr<PatchBackend> make_cuda_backend(const ModelLayout& layout,
                                                const BackendOptions& options);

}  // namespace instantid::detail
