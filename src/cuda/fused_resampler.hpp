#pragma once
// The whole Resampler (spec §3) as one persistent kernel (sm_90+): its 22 linear layers are one
// stream of 8 KB weight tiles that every CTA copies into a shared-memory ring with bulk async
// copies (TMA, mbarrier completion) and multiplies with fp32 FMAs, while the split-K sums,
// LayerNorms and the perceiver attention run as phases between grid-wide barriers. Weights do
// not depend on activations, so each CTA keeps fetching the next layers' weights while it waits
// at a barrier: the weight stream never drains, and there is one launch instead of 36.
// Numerical contract: fp32 FMAs as in the skinny GEMM, split-K partial sums added in a fixed
// order (deterministic for a given device); docs/kernels.md, "Resampler".

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "instantid/layout.hpp"
#include "instantid/tensor.hpp"

namespace instantid::cuda {

// Rows of the largest linear layer the kernel takes: batch · (tokens + 16) <= 40.
constexpr int kFusedResamplerMaxRows = 40;

class FusedResampler {
 public:
  // Whether this device and shape can run the fused kernel: sm_90+ with cooperative launch,
  // dim_head 64, depth <= 6, widths <= 4096 (multiples of 4) and at most 40 rows per linear layer.
  static bool supported(const ModelLayout& layout, int output_dim, int max_batch, int max_tokens);

  // weights(name) returns "image_proj.<name>" (validated by the caller). Repacks the linear
  // weights into the kernel's tile order (zero padded to 64 × 32 tiles) and uploads everything.
  template <typename WeightsFn>
  FusedResampler(const ModelLayout& layout, int output_dim, const WeightsFn& weights, int max_batch,
                 int max_tokens)
      : FusedResampler(layout, output_dim, collect(layout, weights), max_batch, max_tokens) {}
  ~FusedResampler();
  FusedResampler(const FusedResampler&) = delete;
  FusedResampler& operator=(const FusedResampler&) = delete;

  // x: device [batch, tokens, E] float32 → out: device [batch, 16, D_out] float32. One kernel on
  // stream; never allocates or synchronises; graph-capturable.
  void run(const float* x, int batch, int tokens, float* out, cudaStream_t stream);

  std::size_t device_bytes() const { return weights_.bytes() + workspace_.bytes(); }
  int grid_size() const { return grid_; }
  // Grid-wide barriers of one run (the phases between them: fused_resampler.cu).
  int barriers() const { return 4 + 11 * layout_.depth; }
  // Diagnostics: later runs write %globaltimer (ns) of each CTA at its start, at each barrier's
  // arrival and departure and at its end to timeline [2 + 2 · barriers()][grid_size()] (device);
  // null stops it.
  void set_timeline(unsigned long long* timeline) { timeline_ = timeline; }
  // Diagnostics: later runs leave out part of the linear layers' work (their output is then
  // meaningless): 1 the multiplications, 2 the weight stream (every tile reads the first slot),
  // 3 the activation loads; 0 runs everything.
  void set_probe(int probe) { probe_ = probe; }
  // Diagnostics: thread 0 of each CTA logs (%globaltimer << 8 | tag) of its steps to events
  // [grid_size()][2048] (device): 1 tile start, 2 activations ready, 3 weights ready, 4 tile
  // multiplied, 5 segment stored, 10 barrier arrival, 11 departure.
  void set_events(unsigned long long* events) { events_ = events; }

 private:
  // The Resampler's tensors in a fixed order (see fused_resampler.cu, tensor_names()).
  using TensorList = std::vector<const HostTensor*>;
  template <typename WeightsFn>
  static TensorList collect(const ModelLayout& layout, const WeightsFn& weights);
  static std::vector<std::string> tensor_names(const ModelLayout& layout);
  FusedResampler(const ModelLayout& layout, int output_dim, const TensorList& tensors,
                 int max_batch, int max_tokens);

  struct Linear {
    const float* w = nullptr;  // packed tiles [N/64][K/32][64][32] (swizzled)
    const int* owners = nullptr;  // per 64-column tile: count, then segment indices
    int n = 0, k = 0, k_tiles = 0, units = 0, segments = 0, owner_stride = 0;
  };

  ModelLayout layout_;
  int output_dim_ = 0, max_batch_ = 0, max_tokens_ = 0;
  int grid_ = 0, ring_slots_ = 0;
  std::size_t smem_bytes_ = 0;
  std::vector<Linear> linears_;  // proj_in, (to_q, to_kv, to_out, ff1, ff2) × depth, proj_out
  std::vector<const float*> vectors_;  // latents, biases and LayerNorm parameters (device)
  DeviceBuffer weights_;
  DeviceBuffer workspace_;
  float *x_proj_ = nullptr, *lat_ = nullptr, *kv_in_ = nullptr, *ln_ = nullptr;
  float *q_ = nullptr, *kv_ = nullptr, *attn_ = nullptr, *ff_ = nullptr, *pre_out_ = nullptr;
  float* partials_[2] = {nullptr, nullptr};
  unsigned long long* timeline_ = nullptr;
  int probe_ = 0;
  unsigned long long* events_ = nullptr;
};

template <typename WeightsFn>
FusedResampler::TensorList FusedResampler::collect(const ModelLayout& layout,
                                                   const WeightsFn& weights) {
  TensorList list;
  for (const std::string& name : tensor_names(layout)) list.push_back(&weights(name));
  return list;
}

}  // namespace instantid::cuda
