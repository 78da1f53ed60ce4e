#pragma once
// The Resampler (spec §3) on the GPU: float32 GEMMs (the skinny weight-streaming kernel of
// skinny_gemm.hpp, bias, GELU and the feed-forward LayerNorms fused; cuBLAS SGEMM without TF32 for
// larger batches) plus small kernels (LayerNorm, perceiver attention). All weights are uploaded
// once by the constructor; run() only enqueues work and is CUDA-graph capturable.

#include <cuda_runtime_api.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/skinny_gemm.hpp"
#include "instantid/layout.hpp"
#include "instantid/tensor.hpp"

namespace instantid::cuda {

// Returns the Resampler weight "image_proj.<suffix>" (e.g. "proj_in.weight") as float32.
using ResamplerWeights = std::function<const HostTensor&(const std::string& suffix)>;

// How run() multiplies: the defaults are the measured best (docs/performance.md); the other
// settings exist for comparison.
struct GpuResamplerOptions {
  LinearGemmOptions gemm = resampler_gemm();  // the linear layers (3xTF32 skinny GEMMs)
  bool programmatic = true;                   // programmatic dependent launches on sm_90+
  // Each feed-forward LayerNorm folded into the first FF GEMM (LinearGemm::run_row_normalized):
  // one launch fewer per perceiver layer, where the GEMMs sum in clusters and the rows fit.
  bool fold_layer_norms = true;
  // The first perceiver layer's queries and latent keys/values (norm2 of the learned latents
  // times to_q and to_kv) do not depend on the input: computed once by the constructor, so that
  // run() only multiplies the inputs' rows by to_kv, with norm1 folded into it — one launch and
  // a third of that layer's to_q / to_kv weights fewer per run, where the GEMMs sum in clusters
  // and the inputs' rows fit.
  bool first_layer_constants = true;

  static LinearGemmOptions resampler_gemm() {
    LinearGemmOptions o;
    o.math = SkinnyGemmMath::kTf32x3;
    return o;
  }
};

class GpuResampler {
 public:
  // Uploads every weight (validated against layout and output_dim) and sizes the workspace for
  // up to max_batch inputs of up to max_tokens tokens each.
  GpuResampler(const ModelLayout& layout, int output_dim, const ResamplerWeights& weights,
               int max_batch, int max_tokens = 1,
               const GpuResamplerOptions& options = GpuResamplerOptions());
  ~GpuResampler();
  GpuResampler(const GpuResampler&) = delete;
  GpuResampler& operator=(const GpuResampler&) = delete;

  // x: device [batch, tokens, E] float32 → out: device [batch, 16, D_out] float32.
  // Enqueues on stream; never allocates or synchronises.
  void run(const float* x, int batch, int tokens, float* out, cudaStream_t stream);

  std::size_t device_bytes() const;
  int output_dim() const { return output_dim_; }
  GemmPath gemm_path() const { return gemm_->path(); }
  bool cluster_reduce() const { return gemm_->cluster_reduce(); }
  bool programmatic_launch() const { return programmatic_; }
  bool folds_layer_norms() const { return fold_ff_norm_; }
  bool first_layer_constants() const { return first_constants_; }

 private:
  struct Layer {
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *to_q, *to_kv, *to_out;
    const float *ff_norm_w, *ff_norm_b, *ff_w1, *ff_w3;
    // With the FF LayerNorm folded: ff_w1 holds W1·diag(γ); Σ_k of its rows and W1·β.
    const float *ff_colsum = nullptr, *ff_bias = nullptr;
  };
  void gemm(const float* a, const float* w, const float* bias, float* c, int rows, int out_features,
            int in_features, float beta, bool gelu, cudaStream_t stream,
            const float* c_in = nullptr);

  ModelLayout layout_;
  int output_dim_ = 0;
  int max_batch_ = 0;
  int max_tokens_ = 0;
  std::unique_ptr<LinearGemm> gemm_;
  bool programmatic_ = false;     // kernels of run() chained by programmatic dependent launch
  bool fold_ff_norm_ = false;     // FF LayerNorms folded into the FF-in GEMMs
  bool first_constants_ = false;  // layer 0's latent terms precomputed (first_layer_constants)
  DeviceBuffer weights_;
  DeviceBuffer workspace_;
  const float *latents_ = nullptr, *proj_in_w_ = nullptr, *proj_in_b_ = nullptr;
  const float *proj_out_w_ = nullptr, *proj_out_b_ = nullptr;
  const float *norm_out_w_ = nullptr, *norm_out_b_ = nullptr;
  // With first_constants_: layer 0's queries [16, inner] and latent keys/values [16, 2·inner];
  // its to_kv holds to_kv·diag(γ1), with Σ_k of its rows and to_kv·β1 [2·inner]; the learned
  // latents repeated for max_batch inputs (the residual of layer 0's to_out) [max_batch·16, dim].
  const float *q0_ = nullptr, *kv0_latents_ = nullptr, *kv0_colsum_ = nullptr;
  const float *kv0_bias_ = nullptr, *latents_tiled_ = nullptr;
  std::vector<Layer> layers_;
  // workspace slices
  float *x_proj_ = nullptr, *latents_buf_ = nullptr, *ln_ = nullptr, *kv_in_ = nullptr;
  float *q_ = nullptr, *kv_ = nullptr, *attn_ = nullptr, *ff_ = nullptr, *pre_out_ = nullptr;
  // Layer 0's keys and values of the inputs' rows [batch·tokens, 2·inner] (first_constants_).
  float* kv0_inputs_ = nullptr;
};

}  // namespace instantid::cuda
