#pragma once
// stable-diffusion.cpp's PhotoMaker v2 identity embeddings, so `instantid embed` can feed
// `sd --pm-id-embed-path` without Python (docs/cli.md cites the format's source).
//
// id_embeds.bin, all little-endian, as written by stable-diffusion.cpp's face_detect.py and read
// by its load_tensor_from_file():
//   int32 n_dims (4), int32 name length (9), int32 ggml type (0 = F32),
//   int32 ne[4] = {512, N, 1, 1} (ne[0] innermost), name bytes "id_embeds" (no terminator),
//   N × 512 float32, row-major [N, 512].
// Newer stable-diffusion.cpp reads id_embeds.safetensors instead: one F32 tensor "id_embeds"
// [N, 512]; write_sdcpp_id_embeds() picks that when the path ends in ".safetensors".

#include <cstdint>
#include <string>

#include "instantid/tensor.hpp"

namespace instantid::cli {

// embeds: [N, 512] or [N, 1, 512] raw ArcFace embeddings (any last dimension E is accepted and
// written as ne[0] = E). Returns the bytes of the .bin format.
std::string sdcpp_id_embeds_bytes(const HostTensor& embeds);

// Writes `embeds` to `path` atomically, as .bin or (path ends in ".safetensors") safetensors.
void write_sdcpp_id_embeds(const std::string& path, const HostTensor& embeds);

// Parses the .bin format (for tests and `instantid inspect`); throws Error naming the path and
// the first inconsistent field.
HostTensor read_sdcpp_id_embeds_bytes(const std::string& bytes, const std::string& source);

}  // namespace instantid::cli
