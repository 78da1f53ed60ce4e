#pragma once
// instantid::ref — the CPU float32 math of the spec, one function per formula. The CPU backend is
// built from these and every GPU kernel is tested against them (and against fp64 in the tests).
// Section numbers refer to ../shared/spec/instantid_patch.md.

#include <cstdint>
#include <vector>

#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "instantid/tensor.hpp"

namespace instantid::ref {

// §2: torch.manual_seed(seed); torch.rand(n) on the CPU — mt19937, one 32-bit draw per value,
// (draw & (2^24 - 1)) * 2^-24. Bit-exact.
std::vector<float> torch_rand(std::uint64_t seed, std::size_t n);

// §2: the seed ComfyUI derives from a combined embedding: int(float32 sum) mod 1000000007 with
// Python semantics (never negative).
std::uint64_t noise_seed(const float* values /*[n]*/, std::size_t n);

// §2: combines raw face embeddings [N, E] (or [N, 1, E]) into Resampler inputs [k, 1, E]:
// average / norm average → k = 1; concat → k = N.
HostTensor combine_embeddings(const HostTensor& embeds, Combine combine);

// §2: the uncond Resampler input for a combined input [k, 1, E]: zeros when noise == 0, else
// noise · torch_rand(noise_seed(all k·E values), k·E) — ComfyUI's torch.rand_like of the whole
// combined tensor (k = 1 except for concat, where this is one seed for all rows, as ComfyUI does).
HostTensor uncond_input(const HostTensor& cond_input, float noise);

// §3: the Resampler. x: [B, T, E] → [B, 16, D_out]. float32, LayerNorm eps 1e-5, erf GELU.
HostTensor resampler(const InstantIDModel& model, const HostTensor& x);

// §4 "Beyond": the ip keys and values of one layer for one identity, [T, C] each, with the
// embeds_scaling transform applied to K and V (V only: untouched).
struct IpKeyValues {
  HostTensor k_cond, v_cond, k_uncond, v_uncond;  // [T, C_n]
};
IpKeyValues ip_key_values(const InstantIDModel& model, const ImageTokens& tokens, int layer_index,
                          EmbedsScaling scaling, float weight);
// The factor the ip attention output is multiplied by: weight for "V only", 1 otherwise.
float ip_output_scale(EmbedsScaling scaling, float weight);

// §6: the mask of one layer, before batching: mask [M, Hm, Wm] resized bilinearly
// (align_corners=false, no antialias) to (mask_h, mask_w) from (oh, ow, N), flattened, and
// zero-padded or centre-cropped to N tokens → [M, N]. Batch row b of a call with P = B / G images
// per chunk uses row min(b % P, M - 1).
HostTensor layer_mask(const HostTensor& mask, int original_height, int original_width,
                      std::int64_t num_tokens);

// §6, the pieces of layer_mask, for hosts and tests that need them separately.
struct MaskGrid {
  std::int64_t height = 0;  // mask_h
  std::int64_t width = 0;   // mask_w = N // mask_h
};
// mask_h = oh / sqrt(oh·ow / N) (float64), int() + (N % int(mask_h) != 0); throws when the aspect
// ratio leaves int(mask_h) or mask_w at 0 (Python would divide by zero there).
MaskGrid mask_grid(int original_height, int original_width, std::int64_t num_tokens);
// F.interpolate(x.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False) on
// [M, H, W] float32, with PyTorch's float32 source-index arithmetic.
HostTensor bilinear_resize(const HostTensor& images, std::int64_t height, std::int64_t width);
// rows [M, L] → [M, N]: L < N pads zeros, floor((N-L)/2) before and the rest after; L > N keeps
// the centre N entries starting at floor((L-N)/2) (unreachable through mask_grid, kept for hosts
// whose token grid differs).
HostTensor pad_or_crop_tokens(const HostTensor& rows, std::int64_t num_tokens);

// §4: the ip term of one identity at one layer, q [B, N, C] → [B, N, C]:
//   Attn(q, ip_k, ip_v) · output_scale (· mask row), where batch row b of chunk g = b / P
//   (P = B / G, G = cond_or_uncond.size()) attends to (k_cond, v_cond) if cond_or_uncond[g] == 0
//   else to (k_uncond, v_uncond); `mask_rows` is layer_mask's [M, N] (row min(b % P, M - 1)) or
//   null. The caller adds the result to the text attention.
HostTensor ip_attention(const HostTensor& q, const IpKeyValues& kv,
                        const std::vector<int>& cond_or_uncond, float output_scale,
                        const HostTensor* mask_rows);

// Plain multi-head attention, head size 64, scale 1/8, float32 with fp32 softmax:
// q [B, N, C], k/v [B, L, C] → [B, N, C]. k/v with B = 1 are broadcast over the batch.
HostTensor attention(const HostTensor& q, const HostTensor& k, const HostTensor& v);

}  // namespace instantid::ref
