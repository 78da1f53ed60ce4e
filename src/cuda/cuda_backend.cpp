// The CUDA PatchBackend: GPU Resampler for project(), batched ip K/V at add_identity(), masks
// resized on the host per resolution, and one fused decoupled-attention kernel per layer call.
//
// Graph capture: run() never allocates or synchronises once the call's resolution has masks
// (prepare_resolution(), or one earlier call at that resolution): capture after a warm-up step or
// after prepare_resolution().

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/ip_projection.hpp"
#include "cuda/resampler.hpp"
#include "instantid/kernels/decoupled_attention.hpp"
#include "instantid/reference.hpp"
#include "patch/backend.hpp"

namespace instantid {

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" status
    return false;
  }
  return count > 0;
}

namespace detail {

namespace {

using cuda::check_cuda;
using cuda::DeviceBuffer;
using cuda::DeviceGuard;

constexpr int kHeadDim = 64;

const char* kernel_status_hint(cudaError_t status) {
  return status == cudaErrorInvalidValue
             ? " (q/k/v/out need 16-byte aligned data and row strides that are multiples of 8 "
               "elements)"
             : "";
}

class CudaBackend final : public PatchBackend {
 public:
  CudaBackend(const ModelLayout& layout, const BackendOptions& options)
      : layout_(layout), options_(options) {
    INSTANTID_CHECK(options.cuda_dtype == DType::kF16 || options.cuda_dtype == DType::kBF16,
                    "BackendOptions::cuda_dtype: got ", dtype_name(options.cuda_dtype),
                    ", expected one of f16, bf16");
    int count = 0;
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    INSTANTID_CHECK(options.cuda_device >= 0 && options.cuda_device < count,
                    "BackendOptions::cuda_device: got ", options.cuda_device, ", expected 0..",
                    count - 1);
    for (const LayerInfo& l : layout.layers) {
      INSTANTID_CHECK(l.width % kHeadDim == 0, "CUDA backend: width of layer ",
                      layer_id_string(l.id), ": got ", l.width, ", expected a multiple of ",
                      kHeadDim);
    }
  }

  ImageTokens project(const InstantIDModel& model, const HostTensor& cond_input,
                      const HostTensor& uncond_input) override {
    DeviceGuard device(options_.cuda_device);
    INSTANTID_CHECK(cond_input.ndim() == 3 && cond_input.shape() == uncond_input.shape(),
                    "CUDA project: input shapes: got ", cond_input.shape_str(), " and ",
                    uncond_input.shape_str(), ", expected two equal [k, T, E]");
    const int k = static_cast<int>(cond_input.size(0));
    const int tokens = static_cast<int>(cond_input.size(1));
    const int e = static_cast<int>(cond_input.size(2));
    INSTANTID_CHECK(e == layout_.embed_dim, "CUDA project: embedding size: got ", e,
                    ", expected ", layout_.embed_dim);
    const int d_out = model.output_dim();
    const int nq = layout_.num_queries;
    cuda::GpuResampler resampler(
        layout_, d_out, [&](const std::string& s) -> const HostTensor& { return model.image_proj(s); },
        2 * k, tokens);
    const std::size_t in_bytes = static_cast<std::size_t>(cond_input.numel()) * sizeof(float);
    DeviceBuffer x(2 * in_bytes);
    DeviceBuffer y(static_cast<std::size_t>(2) * k * nq * d_out * sizeof(float));
    check_cuda(cudaMemcpy(x.as<float>(), cond_input.data(), in_bytes, cudaMemcpyHostToDevice),
               "CUDA project: upload");
    check_cuda(cudaMemcpy(x.as<char>() + in_bytes, uncond_input.data(), in_bytes,
                          cudaMemcpyHostToDevice),
               "CUDA project: upload");
    resampler.run(x.as<float>(), 2 * k, tokens, y.as<float>(), nullptr);
    // Batch rows 0..k-1 are cond, k..2k-1 uncond; each half concatenated on the token axis.
    ImageTokens out;
    out.cond = HostTensor({1, static_cast<std::int64_t>(k) * nq, d_out});
    out.uncond = HostTensor({1, static_cast<std::int64_t>(k) * nq, d_out});
    const std::size_t half_bytes = static_cast<std::size_t>(k) * nq * d_out * sizeof(float);
    check_cuda(cudaMemcpy(out.cond.data(), y.as<float>(), half_bytes, cudaMemcpyDeviceToHost),
               "CUDA project: download");
    check_cuda(cudaMemcpy(out.uncond.data(), y.as<char>() + half_bytes, half_bytes,
                          cudaMemcpyDeviceToHost),
               "CUDA project: download");
    out.uncond_input = uncond_input;
    return out;
  }

  void add_identity(const InstantIDModel& model, const IdentitySpec& identity) override {
    DeviceGuard device(options_.cuda_device);
    const ImageTokens& t = identity.tokens;
    INSTANTID_CHECK(t.cond.ndim() == 3 && t.cond.shape() == t.uncond.shape() &&
                        t.cond.size(2) == model.output_dim(),
                    "CUDA add_identity: token shapes: got ", t.cond.shape_str(), " and ",
                    t.uncond.shape_str(), ", expected two equal [1, T, ", model.output_dim(), "]");
    std::vector<int> widths;
    for (const LayerInfo& l : layout_.layers) widths.push_back(l.width);
    identities_.emplace_back();
    Identity& id = identities_.back();
    id.has_mask = identity.options.mask.has_value();
    if (id.has_mask) id.mask = *identity.options.mask;
    id.out_scale = identity.options.embeds_scaling == EmbedsScaling::kVOnly
                       ? identity.options.weight
                       : 1.0f;
    try {
      id.kv = cuda::compute_ip_key_values(
          widths, t.cond.data(), t.uncond.data(), static_cast<int>(t.cond.size(1)),
          model.output_dim(), [&](int n) -> const HostTensor& { return model.to_k_ip(n); },
          [&](int n) -> const HostTensor& { return model.to_v_ip(n); },
          identity.options.embeds_scaling, identity.options.weight, options_.cuda_dtype, nullptr);
    } catch (...) {
      identities_.pop_back();
      throw;
    }
    active_ids_.reserve(identities_.size());
    // Masks of this identity for every resolution already prepared.
    for (Resolution& r : resolutions_) {
      r.masks.emplace_back();
      for (std::int64_t n : r.token_counts) add_mask(r, identities_.size() - 1, n);
    }
  }

  void prepare_resolution(int original_height, int original_width) override {
    DeviceGuard device(options_.cuda_device);
    resolution(original_height, original_width);
  }

  void run(const AttentionCall& call, int layer_index, bool include_text,
           const std::vector<char>& active) override {
    DeviceGuard device(options_.cuda_device);
    const int width = layout_.layers.at(static_cast<std::size_t>(layer_index)).width;
    const DType dtype = call.q.dtype;
    INSTANTID_CHECK(dtype == options_.cuda_dtype, "CUDA attention: q dtype: got ",
                    dtype_name(dtype), ", expected ", dtype_name(options_.cuda_dtype),
                    " (BackendOptions::cuda_dtype, the dtype of the prepared ip K/V)");
    const TensorView* views[] = {&call.q, &call.k, &call.v, &call.out};
    const char* names[] = {"q", "k", "v", "out"};
    for (int i = 0; i < 4; ++i) {
      if (!include_text && (i == 1 || i == 2)) continue;
      const TensorView& t = *views[i];
      INSTANTID_CHECK(t.device.type == DeviceType::kCuda, "CUDA attention: ", names[i],
                      " device: got ", device_name(t.device), ", expected cuda");
      INSTANTID_CHECK(t.dtype == dtype, "CUDA attention: ", names[i], " dtype: got ",
                      dtype_name(t.dtype), ", expected ", dtype_name(dtype), " (q's dtype)");
      INSTANTID_CHECK(t.ndim == 3 && t.strides[2] == 1, "CUDA attention: ", names[i],
                      ": got shape ", t.shape_str(), " with last stride ", t.strides[2],
                      ", expected [B, tokens, ", width, "] with a contiguous last dimension");
    }
    const int batch = static_cast<int>(call.q.shape[0]);
    const int queries = static_cast<int>(call.q.shape[1]);
    const int chunks = call.cond_or_uncond == nullptr || call.num_chunks <= 0 ? 1 : call.num_chunks;
    INSTANTID_CHECK(batch % chunks == 0, "CUDA attention: batch: got ", batch,
                    ", expected a multiple of the ", chunks, " chunks");
    INSTANTID_CHECK(chunks <= 64, "CUDA attention: chunks: got ", chunks, ", expected <= 64");

    kernels::DecoupledAttentionParams p;
    p.q = call.q.data;
    p.q_batch_stride = call.q.strides[0];
    p.q_row_stride = call.q.strides[1];
    p.out = call.out.data;
    p.out_batch_stride = call.out.strides[0];
    p.out_row_stride = call.out.strides[1];
    if (include_text) {
      p.k = call.k.data;
      p.k_batch_stride = call.k.shape[0] == 1 ? 0 : call.k.strides[0];
      p.k_row_stride = call.k.strides[1];
      p.v = call.v.data;
      p.v_batch_stride = call.v.shape[0] == 1 ? 0 : call.v.strides[0];
      p.v_row_stride = call.v.strides[1];
      p.text_len = static_cast<int>(call.k.shape[1]);
    }
    p.batch = batch;
    p.queries = queries;
    p.heads = width / kHeadDim;
    p.images_per_chunk = batch / chunks;
    p.uncond_chunks = 0;
    if (call.cond_or_uncond != nullptr) {
      for (int g = 0; g < chunks; ++g) {
        if (call.cond_or_uncond[g] != 0) p.uncond_chunks |= std::uint64_t{1} << g;
      }
    }

    std::vector<int>& ids = active_ids_;  // reused: no host allocation per call
    ids.clear();
    for (std::size_t i = 0; i < identities_.size() && i < active.size(); ++i) {
      if (active[i] != 0) ids.push_back(static_cast<int>(i));
    }
    Resolution* res = nullptr;
    for (int i : ids) {
      if (identities_[static_cast<std::size_t>(i)].has_mask) {
        INSTANTID_CHECK(call.original_height > 0 && call.original_width > 0,
                        "CUDA attention: original size: got ", call.original_height, "x",
                        call.original_width, ", expected positive latent height and width with a mask");
        res = &resolution(call.original_height, call.original_width);
        break;
      }
    }

    const kernels::AttentionDType kdtype =
        dtype == DType::kF16 ? kernels::AttentionDType::kF16 : kernels::AttentionDType::kBF16;
    const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
    std::size_t next = 0;
    bool first = true;
    // Up to kMaxIdentities identities per launch; the text attention rides on the first.
    while (first || next < ids.size()) {
      p.include_text = first && include_text;
      p.num_identities = 0;
      for (; next < ids.size() && p.num_identities < kernels::kMaxIdentities; ++next) {
        const Identity& id = identities_[static_cast<std::size_t>(ids[next])];
        kernels::IpIdentityParams& ip = p.ip[p.num_identities++];
        for (int c = 0; c < 2; ++c) {
          ip.k[c] = id.kv.k(layer_index, c);
          ip.v[c] = id.kv.v(layer_index, c);
        }
        ip.row_stride = width;
        ip.tokens = id.kv.tokens;
        ip.scale = id.out_scale;
        ip.mask = nullptr;
        ip.mask_rows = 0;
        if (id.has_mask) {
          const DeviceBuffer& m = mask_for(*res, static_cast<std::size_t>(ids[next]), queries);
          ip.mask = m.as<float>();
          ip.mask_rows = static_cast<int>(id.mask.size(0));
        }
      }
      if (!p.include_text && p.num_identities == 0) break;
      const cudaError_t status = kernels::decoupled_attention(kdtype, kHeadDim, p, stream);
      if (status != cudaSuccess) {
        throw Error(make_message("CUDA attention at layer ",
                                 layer_id_string(layout_.layers[static_cast<std::size_t>(layer_index)].id),
                                 ": got ", cudaGetErrorName(status), kernel_status_hint(status),
                                 ", expected cudaSuccess"));
      }
      first = false;
    }
  }

  std::size_t device_bytes() const override {
    std::size_t total = 0;
    for (const Identity& id : identities_) total += id.kv.storage.bytes();
    for (const Resolution& r : resolutions_) {
      for (const auto& per_identity : r.masks) {
        for (const auto& m : per_identity) total += m.second.bytes();
      }
    }
    return total;
  }

 private:
  struct Identity {
    bool has_mask = false;
    HostTensor mask;  // [M, Hm, Wm] at image resolution
    float out_scale = 1.0f;
    cuda::IpKeyValueTable kv;
  };
  struct Resolution {
    int height = 0, width = 0;
    std::vector<std::int64_t> token_counts;
    // per identity: (N, [M, N] float32 mask); empty for identities without a mask
    std::vector<std::vector<std::pair<std::int64_t, DeviceBuffer>>> masks;
  };

  // The token counts an SDXL-structured UNet has at a latent size: the i-th distinct width (in
  // ascending order) runs at a downsampling of 2^(i+1) (640 → /2, 1280 → /4).
  std::vector<std::int64_t> token_counts(int height, int width) const {
    std::vector<int> widths;
    for (const LayerInfo& l : layout_.layers) widths.push_back(l.width);
    std::sort(widths.begin(), widths.end());
    widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
    std::vector<std::int64_t> counts;
    for (std::size_t i = 0; i < widths.size(); ++i) {
      const int f = 2 << i;
      counts.push_back(static_cast<std::int64_t>((height + f - 1) / f) * ((width + f - 1) / f));
    }
    return counts;
  }

  Resolution& resolution(int height, int width) {
    for (Resolution& r : resolutions_) {
      if (r.height == height && r.width == width) return r;
    }
    Resolution r;
    r.height = height;
    r.width = width;
    r.token_counts = token_counts(height, width);
    r.masks.resize(identities_.size());
    for (std::size_t i = 0; i < identities_.size(); ++i) {
      for (std::int64_t n : r.token_counts) add_mask(r, i, n);
    }
    resolutions_.push_back(std::move(r));
    return resolutions_.back();
  }

  // Resizes identity i's mask for N tokens (host, ref::layer_mask) and uploads it.
  const DeviceBuffer* add_mask(Resolution& r, std::size_t i, std::int64_t n) {
    const Identity& id = identities_[i];
    if (!id.has_mask) return nullptr;
    for (const auto& m : r.masks[i]) {
      if (m.first == n) return &m.second;
    }
    const HostTensor mask = ref::layer_mask(id.mask, r.height, r.width, n);
    DeviceBuffer buffer(static_cast<std::size_t>(mask.numel()) * sizeof(float));
    check_cuda(cudaMemcpy(buffer.data(), mask.data(), buffer.bytes(), cudaMemcpyHostToDevice),
               "CUDA backend: mask upload");
    r.masks[i].emplace_back(n, std::move(buffer));
    return &r.masks[i].back().second;
  }

  // A token count the resolution did not foresee is resized on first use (allocates).
  const DeviceBuffer& mask_for(Resolution& r, std::size_t i, std::int64_t n) {
    return *add_mask(r, i, n);
  }

  ModelLayout layout_;
  BackendOptions options_;
  std::vector<Identity> identities_;
  std::vector<Resolution> resolutions_;
  std::vector<int> active_ids_;
};

}  // namespace

std::unique_ptr<PatchBackend> make_cuda_backend(const ModelLayout& layout,
                                                const BackendOptions& options) {
  INSTANTID_CHECK(cuda_available(), "CUDA backend: visible CUDA devices: got 0, expected at least "
                                    "one (use Backend::kCpu on machines without a GPU)");
  return std::make_unique<CudaBackend>(layout, options);
}

}  // namespace detail
}  // namespace instantid
