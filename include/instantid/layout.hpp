#pragma once
// The shape of an InstantID checkpoint and the identities of the UNet layers it patches
// (spec instantid_patch.md §1, §5).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace instantid {

enum class BlockType : std::uint8_t { kInput, kMiddle, kOutput };

const char* block_type_name(BlockType type);  // "input", "middle", "output"

// How a host UNet names one cross-attention (attn2) layer: ComfyUI's (block, block id,
// transformer index) triple.
struct LayerId {
  BlockType block = BlockType::kInput;
  int block_id = 0;
  int transformer_index = 0;
  bool operator==(const LayerId& o) const {
    return block == o.block && block_id == o.block_id && transformer_index == o.transformer_index;
  }
};

std::string layer_id_string(const LayerId& id);  // "input 4.1"

struct LayerInfo {
  LayerId id;
  int width = 0;           // C: channels of q/k/v/out at this layer
  int checkpoint_key = 0;  // n in "ip_adapter.<n>.to_k_ip.weight" (2 * index + 1)
};

// Dimensions of the Resampler and the per-layer widths. sdxl() is the real model; tests use
// smaller layouts of the same structure (reduced widths) to keep fixtures small.
struct ModelLayout {
  int embed_dim = 512;     // face embedding length (Resampler input)
  int dim = 1280;          // Resampler width
  int depth = 4;           // perceiver layers
  int heads = 20;          // Resampler attention heads
  int dim_head = 64;
  int num_queries = 16;    // image tokens per identity
  int ff_mult = 4;
  std::vector<LayerInfo> layers;  // in host call order, index 0..69 for SDXL

  // SDXL: 70 layers (input 4,5: 640 ×2 each; input 7,8: 1280 ×10 each; output 0,1,2: 1280 ×10
  // each; output 3,4,5: 640 ×2 each; middle 0: 1280 ×10), Resampler 1280 wide, 20 heads.
  static ModelLayout sdxl();
  // The SDXL table with every width divided by width_divisor and a Resampler of the given size;
  // for fixtures. Widths must stay multiples of 64 (the attention head size).
  static ModelLayout reduced(int width_divisor, int embed_dim, int dim, int heads);

  int num_layers() const { return static_cast<int>(layers.size()); }
  // Index of a layer identity, or nullopt when this layout has no such layer.
  std::optional<int> find(const LayerId& id) const;
  // Index of a layer identity; throws Error naming the identity when unknown.
  int index_of(const LayerId& id) const;
};

// Parses "input"/"middle"/"output"; throws Error on anything else.
BlockType parse_block_type(std::string_view name);

}  // namespace instantid
