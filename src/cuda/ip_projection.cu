// Batched ip K/V projection and the embeds_scaling transform (spec §4).
#include "cuda/ip_projection.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace instantid::cuda {

namespace {

__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One thread per (cond/uncond, k/v, column): reads the T values of its column from the GEMM
// result, applies k_scale to K; V becomes (v - mean) + mean · v_mean_scale (v_mean_scale = 1
// leaves V as is up to rounding, so plain scaling uses v_scale instead).
template <typename T>
__global__ void scatter_layer_kernel(const float* projected /*[2T, J]*/, std::int64_t j_total,
                                     std::int64_t col0, int width, int tokens, float k_scale,
                                     float v_scale, bool mean_v, float v_mean_scale,
                                     T* dst /*[4][T, width]*/) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= 4 * width) return;
  const int which = i / width;  // 0 K_c, 1 V_c, 2 K_u, 3 V_u
  const int c = i % width;
  const int half = which / 2;
  const bool is_v = (which % 2) == 1;
  const float* src = projected + static_cast<std::int64_t>(half) * tokens * j_total + col0 +
                     (is_v ? width : 0) + c;
  T* out = dst + static_cast<std::int64_t>(which) * tokens * width + c;
  float mean = 0.0f;
  if (is_v && mean_v) {
    for (int t = 0; t < tokens; ++t) mean += src[t * j_total];
    mean /= static_cast<float>(tokens);
  }
  for (int t = 0; t < tokens; ++t) {
    const float x = src[t * j_total];
    float y;
    if (!is_v) {
      y = x * k_scale;
    } else if (mean_v) {
      y = (x - mean) + mean * v_mean_scale;
    } else {
      y = x * v_scale;
    }
    store(out + static_cast<std::int64_t>(t) * width, y);
  }
}

}  // namespace

IpKeyValueTable compute_ip_key_values(const std::vector<int>& widths, const float* cond,
                                      const float* uncond, int tokens, int output_dim,
                                      const LayerWeights& to_k, const LayerWeights& to_v,
                                      EmbedsScaling scaling, float weight, DType dtype,
                                      cudaStream_t stream, std::size_t weight_budget_bytes) {
  INSTANTID_CHECK(dtype == DType::kF16 || dtype == DType::kBF16,
                  "ip K/V dtype: got ", dtype_name(dtype), ", expected one of f16, bf16");
  IpKeyValueTable table;
  table.tokens = tokens;
  table.dtype = dtype;
  std::int64_t total = 0;
  for (int w : widths) {
    table.offset.push_back(total);
    table.width.push_back(w);
    total += 4LL * tokens * w;
  }
  table.storage = DeviceBuffer(static_cast<std::size_t>(total) * dtype_size(dtype));

  DeviceBuffer tokens_dev(static_cast<std::size_t>(2) * tokens * output_dim * sizeof(float));
  const std::size_t token_bytes = static_cast<std::size_t>(tokens) * output_dim * sizeof(float);
  check_cuda(cudaMemcpy(tokens_dev.as<float>(), cond, token_bytes, cudaMemcpyHostToDevice),
             "ip K/V: token upload");
  check_cuda(cudaMemcpy(tokens_dev.as<float>() + static_cast<std::size_t>(tokens) * output_dim,
                        uncond, token_bytes, cudaMemcpyHostToDevice),
             "ip K/V: token upload");

  cublasHandle_t cublas = nullptr;
  check_cublas(cublasCreate(&cublas), "cublasCreate");
  struct HandleGuard {
    cublasHandle_t h;
    ~HandleGuard() { cublasDestroy(h); }
  } guard{cublas};
  check_cublas(cublasSetStream(cublas, stream), "cublasSetStream");
  check_cublas(cublasSetMathMode(cublas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");

  const std::size_t row_bytes = static_cast<std::size_t>(output_dim) * sizeof(float);
  const std::size_t max_rows = std::max<std::size_t>(weight_budget_bytes / row_bytes, 1);
  const int n_layers = static_cast<int>(widths.size());
  int first = 0;
  while (first < n_layers) {
    // Group [first, last) with Σ 2·C_n rows within the budget (at least one layer).
    int last = first;
    std::int64_t rows = 0;
    while (last < n_layers &&
           (last == first || static_cast<std::size_t>(rows + 2 * widths[last]) <= max_rows)) {
      rows += 2 * widths[last];
      ++last;
    }
    DeviceBuffer w(static_cast<std::size_t>(rows) * row_bytes);
    DeviceBuffer projected(static_cast<std::size_t>(2) * tokens * rows * sizeof(float));
    std::int64_t row = 0;
    for (int n = first; n < last; ++n) {
      for (int kv = 0; kv < 2; ++kv) {
        const HostTensor& t = kv == 0 ? to_k(n) : to_v(n);
        const std::vector<std::int64_t> expected = {widths[n], output_dim};
        if (t.shape() != expected) {
          throw_mismatch(make_message("ip K/V: projection weight of layer ", n, kv ? " (v)" : " (k)"),
                         t.shape_str(), shape_string(expected));
        }
        check_cuda(cudaMemcpyAsync(w.as<float>() + row * output_dim, t.data(),
                                   static_cast<std::size_t>(t.numel()) * sizeof(float),
                                   cudaMemcpyHostToDevice, stream),
                   "ip K/V: weight upload");
        row += widths[n];
      }
    }
    // projected [2T, rows] = tokens [2T, D] · wᵀ
    const float alpha = 1.0f, beta = 0.0f;
    check_cublas(cublasSgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), 2 * tokens,
                             output_dim, &alpha, w.as<float>(), output_dim, tokens_dev.as<float>(),
                             output_dim, &beta, projected.as<float>(), static_cast<int>(rows)),
                 "ip K/V: cublasSgemm");
    std::int64_t col0 = 0;
    for (int n = first; n < last; ++n) {
      const int width = widths[n];
      const float c_penalty = weight * static_cast<float>(width) / 1280.0f;
      float k_scale = 1.0f, v_scale = 1.0f, v_mean_scale = 1.0f;
      bool mean_v = false;
      switch (scaling) {
        case EmbedsScaling::kVOnly: break;
        case EmbedsScaling::kKV: k_scale = v_scale = weight; break;
        case EmbedsScaling::kKVCPenalty: k_scale = v_scale = c_penalty; break;
        case EmbedsScaling::kKMeanVCPenalty:
          k_scale = c_penalty;
          mean_v = true;
          v_mean_scale = c_penalty;
          break;
      }
      const int threads = 256;
      const int blocks = (4 * width + threads - 1) / threads;
      char* dst = table.storage.as<char>() +
                  table.offset[static_cast<std::size_t>(n)] * static_cast<std::int64_t>(dtype_size(dtype));
      if (dtype == DType::kF16) {
        scatter_layer_kernel<__half><<<blocks, threads, 0, stream>>>(
            projected.as<float>(), rows, col0, width, tokens, k_scale, v_scale, mean_v,
            v_mean_scale, reinterpret_cast<__half*>(dst));
      } else {
        scatter_layer_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
            projected.as<float>(), rows, col0, width, tokens, k_scale, v_scale, mean_v,
            v_mean_scale, reinterpret_cast<__nv_bfloat16*>(dst));
      }
      check_cuda(cudaGetLastError(), "ip K/V: scatter kernel launch");
      col0 += 2 * width;
    }
    // The group's buffers are freed at scope end; wait until the stream no longer reads them.
    check_cuda(cudaStreamSynchronize(stream), "ip K/V: synchronise");
    first = last;
  }
  return table;
}

}  // namespace instantid::cuda
