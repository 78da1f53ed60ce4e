// Argument checks and the runtime (dtype, head dim) switch of the decoupled attention kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "instantid/kernels/decoupled_attention.hpp"
#include "instantid/kernels/warpgroup_mma.cuh"

namespace instantid::kernels {

namespace {
bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
bool stride_ok(std::int64_t s) { return s >= 0 && s % 8 == 0; }
}  // namespace

cudaError_t check_decoupled_attention(const DecoupledAttentionParams& p) noexcept {
  // grid: x = heads, y = blocks of 64 query rows (<= 65535), z = batch (<= 65535)
  if (p.batch < 1 || p.queries < 1 || p.heads < 1 || p.batch > 65535 || p.queries > 64 * 65535)
    return cudaErrorInvalidValue;
  if (p.images_per_chunk < 1 || p.num_identities < 0 || p.num_identities > kMaxIdentities)
    return cudaErrorInvalidValue;
  if ((p.batch - 1) / p.images_per_chunk >= 64 && p.uncond_chunks != 0)
    return cudaErrorInvalidValue;
  if (!aligned16(p.q) || !aligned16(p.out) || p.q == nullptr || p.out == nullptr)
    return cudaErrorInvalidValue;
  if (!stride_ok(p.q_batch_stride) || !stride_ok(p.q_row_stride) ||
      !stride_ok(p.out_batch_stride) || !stride_ok(p.out_row_stride))
    return cudaErrorInvalidValue;
  if (p.include_text) {
    if (p.text_len < 1 || p.k == nullptr || p.v == nullptr || !aligned16(p.k) || !aligned16(p.v))
      return cudaErrorInvalidValue;
    if (!stride_ok(p.k_batch_stride) || !stride_ok(p.k_row_stride) ||
        !stride_ok(p.v_batch_stride) || !stride_ok(p.v_row_stride))
      return cudaErrorInvalidValue;
  }
  for (int i = 0; i < p.num_identities; ++i) {
    const IpIdentityParams& ip = p.ip[i];
    if (ip.tokens < 1 || !stride_ok(ip.row_stride)) return cudaErrorInvalidValue;
    for (int c = 0; c < 2; ++c) {
      if (ip.k[c] == nullptr || ip.v[c] == nullptr || !aligned16(ip.k[c]) || !aligned16(ip.v[c]))
        return cudaErrorInvalidValue;
    }
    if (ip.mask != nullptr && ip.mask_rows < 1) return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

bool warpgroup_attention_available() noexcept { return warpgroup_mma_compiled(); }

cudaError_t decoupled_attention(AttentionDType dtype, int head_dim,
                                const DecoupledAttentionParams& params,
                                cudaStream_t stream) noexcept {
  if (dtype == AttentionDType::kF16) {
    if (head_dim == 64) return launch_decoupled_attention<__half, 64>(params, stream);
    if (head_dim == 128) return launch_decoupled_attention<__half, 128>(params, stream);
  } else if (dtype == AttentionDType::kBF16) {
    if (head_dim == 64) return launch_decoupled_attention<__nv_bfloat16, 64>(params, stream);
    if (head_dim == 128) return launch_decoupled_attention<__nv_bfloat16, 128>(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t decoupled_attention_variant(AttentionDType dtype, int head_dim,
                                        AttentionVariant variant,
                                        const DecoupledAttentionParams& params, int max_ctas,
                                        cudaStream_t stream) noexcept {
  if (dtype == AttentionDType::kF16) {
    if (head_dim == 64)
      return launch_decoupled_attention_variant<__half, 64>(variant, params, max_ctas, stream);
    if (head_dim == 128)
      return launch_decoupled_attention_variant<__half, 128>(variant, params, max_ctas, stream);
  } else if (dtype == AttentionDType::kBF16) {
    if (head_dim == 64)
      return launch_decoupled_attention_variant<__nv_bfloat16, 64>(variant, params, max_ctas,
                                                                   stream);
    if (head_dim == 128)
      return launch_decoupled_attention_variant<__nv_bfloat16, 128>(variant, params, max_ctas,
                                                                    stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace instantid::kernels
