#include "commands/common.hpp"

#include <set>

#include "commands/args.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid::cli {

ModelLayout infer_layout(const std::string& path) {
  const CheckpointFile file = CheckpointFile::open(path);
  auto shape_of = [&](const std::string& name) -> const std::vector<std::int64_t>& {
    const CheckpointTensor* tensor = file.find(name);
    if (tensor == nullptr) {
      throw Error(make_message(path, ": tensor '", name,
                               "': got no such tensor, expected an InstantID checkpoint "
                               "(image_proj.* and ip_adapter.*)"));
    }
    return tensor->shape;
  };
  const auto& proj_in = shape_of("image_proj.proj_in.weight");  // [dim, E]
  const auto& first_k = shape_of("ip_adapter.1.to_k_ip.weight");  // [C_0, D_out]
  INSTANTID_CHECK(proj_in.size() == 2 && first_k.size() == 2, path,
                  ": image_proj.proj_in.weight / ip_adapter.1.to_k_ip.weight: got ranks ",
                  proj_in.size(), " / ", first_k.size(), ", expected 2 / 2");
  const ModelLayout sdxl = ModelLayout::sdxl();
  const std::int64_t dim = proj_in[0];
  const std::int64_t embed_dim = proj_in[1];
  const std::int64_t first_width = first_k[0];
  if (dim == sdxl.dim && embed_dim == sdxl.embed_dim && first_width == sdxl.layers[0].width) {
    return sdxl;
  }
  INSTANTID_CHECK(first_width > 0 && sdxl.layers[0].width % first_width == 0, path,
                  ": ip_adapter.1.to_k_ip.weight rows: got ", first_width,
                  ", expected a divisor of 640 (SDXL's first width)");
  INSTANTID_CHECK(dim % 64 == 0, path, ": Resampler width: got ", dim,
                  ", expected a multiple of 64");
  return ModelLayout::reduced(static_cast<int>(sdxl.layers[0].width / first_width),
                              static_cast<int>(embed_dim), static_cast<int>(dim),
                              static_cast<int>(dim / 64));
}

InstantIDModel load_model(const std::string& path) {
  return InstantIDModel::load(path, infer_layout(path));
}

DType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "f32" || name == "float32") return DType::kF32;
  if (name == "f16" || name == "float16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  throw UsageError(what + ": got '" + name + "', expected one of f32, f16, bf16");
}

std::string describe_layout(const ModelLayout& layout) {
  std::set<int> widths;
  for (const LayerInfo& layer : layout.layers) widths.insert(layer.width);
  std::string width_list;
  for (int width : widths) width_list += (width_list.empty() ? "" : "/") + std::to_string(width);
  const ModelLayout sdxl = ModelLayout::sdxl();
  const bool is_sdxl = layout.dim == sdxl.dim && layout.embed_dim == sdxl.embed_dim &&
                       layout.layers.size() == sdxl.layers.size() &&
                       layout.layers[0].width == sdxl.layers[0].width;
  return make_message(is_sdxl ? "SDXL" : "reduced SDXL-structured", " (", layout.num_layers(),
                      " layers, widths ", width_list, ", Resampler ", layout.dim, " wide, ",
                      layout.heads, " heads, embedding ", layout.embed_dim, ")");
}

}  // namespace instantid::cli
