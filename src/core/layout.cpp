#include "instantid/layout.hpp"

#include "instantid/error.hpp"

namespace instantid {

const char* block_type_name(BlockType type) {
  switch (type) {
    case BlockType::kInput: return "input";
    case BlockType::kMiddle: return "middle";
    case BlockType::kOutput: return "output";
  }
  return "?";
}

BlockType parse_block_type(std::string_view name) {
  if (name == "input") return BlockType::kInput;
  if (name == "middle") return BlockType::kMiddle;
  if (name == "output") return BlockType::kOutput;
  throw Error(make_message("block type: got \"", name, "\", expected input, middle or output"));
}

std::string layer_id_string(const LayerId& id) {
  return make_message(block_type_name(id.block), " ", id.block_id, ".", id.transformer_index);
}

ModelLayout ModelLayout::sdxl() {
  struct Block {
    BlockType type;
    int id;
    int depth;
    int width;
  };
  // Host call order of SDXL's UNet (spec §5): input blocks, output blocks, then middle — the
  // order of the checkpoint keys 1, 3, ..., 139.
  static const Block kBlocks[] = {
      {BlockType::kInput, 4, 2, 640},    {BlockType::kInput, 5, 2, 640},
      {BlockType::kInput, 7, 10, 1280},  {BlockType::kInput, 8, 10, 1280},
      {BlockType::kOutput, 0, 10, 1280}, {BlockType::kOutput, 1, 10, 1280},
      {BlockType::kOutput, 2, 10, 1280}, {BlockType::kOutput, 3, 2, 640},
      {BlockType::kOutput, 4, 2, 640},   {BlockType::kOutput, 5, 2, 640},
      {BlockType::kMiddle, 0, 10, 1280},
  };
  ModelLayout layout;
  for (const Block& block : kBlocks) {
    for (int t = 0; t < block.depth; ++t) {
      const int index = static_cast<int>(layout.layers.size());
      layout.layers.push_back(LayerInfo{LayerId{block.type, block.id, t}, block.width, 2 * index + 1});
    }
  }
  return layout;
}

ModelLayout ModelLayout::reduced(int width_divisor, int embed_dim, int dim, int heads) {
  INSTANTID_CHECK(width_divisor > 0 && 640 % width_divisor == 0 && (640 / width_divisor) % 64 == 0,
                  "ModelLayout::reduced width_divisor: got ", width_divisor,
                  ", expected a divisor of 640 leaving a multiple of 64 (1, 2, 5 or 10)");
  INSTANTID_CHECK(embed_dim > 0 && dim > 0 && heads > 0 && dim == heads * 64,
                  "ModelLayout::reduced: got embed_dim ", embed_dim, ", dim ", dim, ", heads ", heads,
                  ", expected positive sizes with dim == heads * 64");
  ModelLayout layout = sdxl();
  layout.embed_dim = embed_dim;
  layout.dim = dim;
  layout.heads = heads;
  for (LayerInfo& layer : layout.layers) layer.width /= width_divisor;
  return layout;
}

std::optional<int> ModelLayout::find(const LayerId& id) const {
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].id == id) return static_cast<int>(i);
  }
  return std::nullopt;
}

int ModelLayout::index_of(const LayerId& id) const {
  if (auto index = find(id)) return *index;
  throw Error(make_message("layer identity: got ", layer_id_string(id),
                           ", expected one of the layout's ", layers.size(),
                           " layers (SDXL: input 4-5, 7-8; output 0-5; middle 0)"));
}

}  // namespace instantid
