// Explicit instantiation: decoupled attention, f16, head dim 64.
#include "instantid/kernels/decoupled_attention.cuh"

namespace instantid::kernels {
template cudaError_t launch_decoupled_attention<__half, 64>(const DecoupledAttentionParams&,
                                                            cudaStream_t) noexcept;
template cudaError_t launch_decoupled_attention_variant<__half, 64>(
    AttentionVariant, const DecoupledAttentionParams&, int, cudaStream_t) noexcept;
}  // namespace instantid::kernels
