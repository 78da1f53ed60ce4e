#pragma once
// The Resampler (spec §3) on the GPU: float32 cuBLAS GEMMs (no TF32) plus small kernels
// (LayerNorm, erf GELU, bias/latent broadcast, perceiver attention). All weights are uploaded once
// by the constructor; run() only enqueues work and is CUDA-graph capturable.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <functional>
#include <string>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "instantid/layout.hpp"
#include "instantid/tensor.hpp"

namespace instantid::cuda {

// Returns the Resampler weight "image_proj.<suffix>" (e.g. "proj_in.weight") as float32.
using ResamplerWeights = std::function<const HostTensor&(const std::string& suffix)>;

class GpuResampler {
 public:
  // Uploads every weight (validated against layout and output_dim) and sizes the workspace for
  // up to max_batch inputs of up to max_tokens tokens each.
  GpuResampler(const ModelLayout& layout, int output_dim, const ResamplerWeights& weights,
               int max_batch, int max_tokens = 1);
  ~GpuResampler();
  GpuResampler(const GpuResampler&) = delete;
  GpuResampler& operator=(const GpuResampler&) = delete;

  // x: device [batch, tokens, E] float32 → out: device [batch, 16, D_out] float32.
  // Enqueues on stream; never allocates or synchronises.
  void run(const float* x, int batch, int tokens, float* out, cudaStream_t stream);

  std::size_t device_bytes() const;
  int output_dim() const { return output_dim_; }

 private:
  struct Layer {
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *to_q, *to_kv, *to_out;
    const float *ff_norm_w, *ff_norm_b, *ff_w1, *ff_w3;
  };
  void gemm(const float* a, const float* w, float* c, int rows, int out_features,
            int in_features, float beta);

  ModelLayout layout_;
  int output_dim_ = 0;
  int max_batch_ = 0;
  int max_tokens_ = 0;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer weights_;
  DeviceBuffer workspace_;
  DeviceBuffer cublas_workspace_;
  const float *latents_ = nullptr, *proj_in_w_ = nullptr, *proj_in_b_ = nullptr;
  const float *proj_out_w_ = nullptr, *proj_out_b_ = nullptr;
  const float *norm_out_w_ = nullptr, *norm_out_b_ = nullptr;
  std::vector<Layer> layers_;
  // workspace slices
  float *x_proj_ = nullptr, *latents_buf_ = nullptr, *ln_ = nullptr, *kv_in_ = nullptr;
  float *q_ = nullptr, *kv_ = nullptr, *attn_ = nullptr, *ff_ = nullptr, *pre_out_ = nullptr;
};

}  // namespace instantid::cuda
