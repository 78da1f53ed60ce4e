#pragma once
// The ip K/V of every layer for one identity (spec §4 "Beyond"), computed once on the GPU:
// the projection weights of a group of layers are concatenated into one [Σ 2·C_n, D] matrix and
// multiplied with the cond and uncond tokens ([2T, D]) in one float32 GEMM; a small kernel then
// applies the embeds_scaling transform, converts to f16/bf16 and scatters per layer. The weights
// are freed when this returns.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "instantid/patch.hpp"

namespace instantid::cuda {

// Per layer: K_c, V_c, K_u, V_u, each [T, C_n] row-major, consecutive from `offset` (elements).
struct IpKeyValueTable {
  DeviceBuffer storage;
  std::vector<std::int64_t> offset;  // per layer, in elements of `dtype`
  std::vector<int> width;            // C_n
  int tokens = 0;                    // T
  DType dtype = DType::kF16;

  const void* k(int layer, int uncond) const { return at(layer, uncond ? 2 : 0); }
  const void* v(int layer, int uncond) const { return at(layer, uncond ? 3 : 1); }

 private:
  const void* at(int layer, int which) const {
    const std::size_t l = static_cast<std::size_t>(layer);
    return storage.as<char>() +
           (offset[l] + static_cast<std::int64_t>(which) * tokens * width[l]) *
               static_cast<std::int64_t>(dtype_size(dtype));
  }
};

// Returns [C_n, D] float32 weights of layer n.
using LayerWeights = std::function<const HostTensor&(int layer)>;

// cond, uncond: host [T, D] float32. Weight groups are bounded by weight_budget_bytes of device
// memory (one GEMM per group; the whole SDXL table is 1.36 GB in float32).
IpKeyValueTable compute_ip_key_values(const std::vector<int>& widths, const float* cond,
                                      const float* uncond, int tokens, int output_dim,
                                      const LayerWeights& to_k, const LayerWeights& to_v,
                                      EmbedsScaling scaling, float weight, DType dtype,
                                      cudaStream_t stream,
                                      std::size_t weight_budget_bytes = std::size_t{256} << 20);

}  // namespace instantid::cuda
