// The CPU PatchBackend: the reference math (instantid::ref) on float32 copies of the host's
// tensors, written back in out's dtype. Usable as a backend and the oracle of the CUDA tests.

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>

#include "instantid/reference.hpp"
#include "patch/backend.hpp"

namespace instantid::detail {

namespace {

// Element offset of linear (row-major) index i of a view with arbitrary strides.
std::int64_t strided_offset(const TensorView& view, std::int64_t i) {
  std::int64_t offset = 0;
  for (int d = view.ndim; d-- > 0;) {
    const auto dim = static_cast<std::size_t>(d);
    offset += (i % view.shape[dim]) * view.strides[dim];
    i /= view.shape[dim];
  }
  return offset;
}

class CpuBackend final : public PatchBackend {
 public:
  explicit CpuBackend(const ModelLayout& layout) : layout_(layout) {}

  ImageTokens project(const InstantIDModel& model, const HostTensor& cond_input,
                      const HostTensor& uncond_input) override {
    auto row = [](const HostTensor& t) {  // [k, 16, D] → [1, 16·k, D]
      return t.reshaped({1, t.size(0) * t.size(1), t.size(2)});
    };
    ImageTokens tokens;
    tokens.cond = row(ref::resampler(model, cond_input));
    tokens.uncond = row(ref::resampler(model, uncond_input));
    tokens.uncond_input = uncond_input;
    return tokens;
  }

  void add_identity(const InstantIDModel& model, const IdentitySpec& identity) override {
    Identity id;
    id.output_scale =
        ref::ip_output_scale(identity.options.embeds_scaling, identity.options.weight);
    if (identity.options.mask) id.mask = *identity.options.mask;
    id.kv.reserve(static_cast<std::size_t>(layout_.num_layers()));
    for (int n = 0; n < layout_.num_layers(); ++n) {
      id.kv.push_back(ref::ip_key_values(model, identity.tokens, n, identity.options.embeds_scaling,
                                         identity.options.weight));
    }
    identities_.push_back(std::move(id));
  }

  void prepare_resolution(int original_height, int original_width) override {
    // Token counts of an SDXL-structured UNet: the i-th distinct width runs at 1 / 2^(i+1).
    std::vector<int> widths;
    for (const LayerInfo& l : layout_.layers) widths.push_back(l.width);
    std::sort(widths.begin(), widths.end());
    widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
    for (std::size_t i = 0; i < identities_.size(); ++i) {
      if (!identities_[i].mask) continue;
      for (std::size_t w = 0; w < widths.size(); ++w) {
        const int f = 2 << w;
        const std::int64_t n = static_cast<std::int64_t>((original_height + f - 1) / f) *
                               ((original_width + f - 1) / f);
        mask_rows(i, original_height, original_width, n);
      }
    }
  }

  void run(const AttentionCall& call, int layer_index, bool include_text,
           const std::vector<char>& active) override {
    const HostTensor q = HostTensor::from_view(call.q);  // [B, N, C]
    HostTensor out = include_text ? ref::attention(q, HostTensor::from_view(call.k),
                                                   HostTensor::from_view(call.v))
                                  : HostTensor::from_view(call.out);  // [B, N, C]
    std::vector<int> cond_or_uncond{0};
    if (call.cond_or_uncond != nullptr) {
      cond_or_uncond.assign(call.cond_or_uncond, call.cond_or_uncond + call.num_chunks);
    }
    for (std::size_t i = 0; i < identities_.size() && i < active.size(); ++i) {
      if (active[i] == 0) continue;
      const Identity& id = identities_[i];
      const HostTensor* mask =
          id.mask ? &mask_rows(i, call.original_height, call.original_width, q.size(1)) : nullptr;
      const HostTensor ip = ref::ip_attention(q, id.kv[static_cast<std::size_t>(layer_index)],
                                              cond_or_uncond, id.output_scale, mask);
      for (std::int64_t j = 0; j < out.numel(); ++j) out.data()[j] += ip.data()[j];
    }
    for (std::int64_t j = 0; j < out.numel(); ++j) {
      store_from_float(call.out.data, call.out.dtype, strided_offset(call.out, j), out.data()[j]);
    }
  }

  std::size_t device_bytes() const override { return 0; }

 private:
  struct Identity {
    float output_scale = 1.0f;
    std::optional<HostTensor> mask;    // [M, Hm, Wm]
    std::vector<ref::IpKeyValues> kv;  // per layer: [T, C_n] each
  };

  // layer_mask rows [M, N] of identity i, cached per (oh, ow, N).
  const HostTensor& mask_rows(std::size_t i, int oh, int ow, std::int64_t n) {
    const auto key = std::make_tuple(i, oh, ow, n);
    auto it = masks_.find(key);
    if (it == masks_.end()) {
      it = masks_.emplace(key, ref::layer_mask(*identities_[i].mask, oh, ow, n)).first;
    }
    return it->second;
  }

  ModelLayout layout_;
  std::vector<Identity> identities_;
  std::map<std::tuple<std::size_t, int, int, std::int64_t>, HostTensor> masks_;
};

}  // namespace

std::unique_ptr<PatchBackend> make_cpu_backend(const ModelLayout& layout) {
  return std::make_unique<CpuBackend>(layout);
}

}  // namespace instantid::detail
