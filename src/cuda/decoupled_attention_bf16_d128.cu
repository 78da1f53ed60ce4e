// Explicit instantiation: decoupled attention, bf16, head dim 128.
#include "instantid/kernels/decoupled_attention.cuh"

namespace instantid::kernels {
template cudaError_t launch_decoupled_attention<__nv_bfloat16, 128>(const DecoupledAttentionParams&,
                                                            cudaStream_t) noexcept;
template cudaError_t launch_decoupled_attention_variant<__nv_bfloat16, 128>(
    AttentionVariant, const DecoupledAttentionParams&, int, cudaStream_t) noexcept;
}  // namespace instantid::kernels
