#pragma once
// Fused decoupled cross-attention (InstantID / IP-Adapter attn2), host-side declarations.
// The device templates live in decoupled_attention.cuh; src/cuda/ compiles one unit per
// (dtype, head dim). Numerical contract: docs/kernels.md.
//
//   out[b, n, h] = [include_text] softmax(q·K_txtᵀ / sqrt(d))·V_txt
//                + Σ_i s_i · M_i[row(b), n] · softmax(q·K_ip,iᵀ / sqrt(d))·V_ip,i
//                (+ the previous out when include_text is false: "add ip only")
//
// Every softmax is normalised on its own, scores and sums in fp32, P rounded to the input dtype
// before the P·V product (tensor-core MMA, fp32 accumulation), out rounded once.

#include <cuda_runtime_api.h>

#include <cstdint>

namespace instantid::kernels {

constexpr int kMaxIdentities = 4;

// One stacked identity at one layer.
struct IpIdentityParams {
  const void* k[2] = {nullptr, nullptr};  // [T, H*d] row-major; [0] cond, [1] uncond
  const void* v[2] = {nullptr, nullptr};  // [T, H*d] row-major
  std::int64_t row_stride = 0;            // elements between token rows of k and v (>= H*d)
  int tokens = 0;                         // T >= 1
  float scale = 1.0f;                     // s_i (weight for "V only", 1 for the K+V modes)
  const float* mask = nullptr;            // [mask_rows, N] row-major float32, or null
  int mask_rows = 0;                      // batch row b uses mask row min(b % P, mask_rows - 1)
};

struct DecoupledAttentionParams {
  const void* q = nullptr;  // [B, N, H*d], last dim contiguous
  std::int64_t q_batch_stride = 0, q_row_stride = 0;
  const void* k = nullptr;  // [B, L, H*d] text keys (batch stride 0 broadcasts one row)
  std::int64_t k_batch_stride = 0, k_row_stride = 0;
  const void* v = nullptr;  // [B, L, H*d] text values
  std::int64_t v_batch_stride = 0, v_row_stride = 0;
  void* out = nullptr;  // [B, N, H*d]: written, or accumulated into when !include_text
  std::int64_t out_batch_stride = 0, out_row_stride = 0;
  int batch = 0;     // B
  int queries = 0;   // N
  int text_len = 0;  // L (ignored when !include_text)
  int heads = 0;     // H
  bool include_text = true;
  int images_per_chunk = 1;         // P = B / G
  std::uint64_t uncond_chunks = 0;  // bit g set: chunk g (rows g·P .. g·P+P-1) uses uncond K/V
  int num_identities = 0;           // 0..kMaxIdentities
  IpIdentityParams ip[kMaxIdentities];
};

enum class AttentionDType : std::uint8_t { kF16, kBF16 };

// Checks what the kernel needs: 16-byte aligned pointers, strides multiple of 8 elements,
// N, H >= 1, L >= 1 when include_text, T >= 1 per identity, <= kMaxIdentities identities,
// <= 64 chunks. Returns cudaSuccess or cudaErrorInvalidValue.
cudaError_t check_decoupled_attention(const DecoupledAttentionParams& params) noexcept;

// Enqueues one kernel. Head dims 64 and 128, f16 and bf16; anything else → cudaErrorInvalidValue.
// Never allocates or synchronises; graph-capture safe.
template <typename T, int kHeadDim>
cudaError_t launch_decoupled_attention(const DecoupledAttentionParams& params,
                                       cudaStream_t stream) noexcept;

// The variants the launcher picks between (docs/kernels.md). kAuto is what
// launch_decoupled_attention does; kPersistent exists for head dim 64 with every phase <= 80 keys
// (else cudaErrorInvalidValue); kResident for up to 256 (d 64) / 128 (d 128) padded key rows.
// kPersistentWarpGroup is the persistent variant on sm_90a warpgroup MMAs (wgmma): same cover,
// cudaErrorInvalidValue unless the loaded image was compiled for sm_90a.
// max_ctas > 0 caps the persistent grid (tests: many tiles per warp, ranges over two pairs).
enum class AttentionVariant : std::uint8_t { kAuto, kResident, kPersistent, kPersistentWarpGroup };

template <typename T, int kHeadDim>
cudaError_t launch_decoupled_attention_variant(AttentionVariant variant,
                                               const DecoupledAttentionParams& params, int max_ctas,
                                               cudaStream_t stream) noexcept;

// Whether kPersistentWarpGroup can run on the current device: this library's kernels were
// compiled for sm_90a and the device is one (H100 / H200). Never synchronises.
bool warpgroup_attention_available() noexcept;

// Runtime switch over the compiled instantiations.
cudaError_t decoupled_attention(AttentionDType dtype, int head_dim,
                                const DecoupledAttentionParams& params,
                                cudaStream_t stream) noexcept;
cudaError_t decoupled_attention_variant(AttentionDType dtype, int head_dim,
                                        AttentionVariant variant,
                                        const DecoupledAttentionParams& params, int max_ctas,
                                        cudaStream_t stream) noexcept;

}  // namespace instantid::kernels
