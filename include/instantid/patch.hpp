#pragma once
// The AttentionPatch API: what a host UNet calls at each cross-attention (attn2) layer
// (spec instantid_patch.md §2–§6).
//
//   InstantIDModel model = InstantIDModel::load("ip-adapter.bin");
//   PatchOptions options;
//   options.weight = 0.8f;
//   AttentionPatch patch(model, face_embeds /*[N,512]*/, options);
//   // at every attn2 of every step:
//   patch.attention(AttentionCall{q, k, v, out, layer_id, sigma, cond_or_uncond, G, oh, ow});
//
// Everything that allocates or synchronises happens in the constructor and stack(); attention()
// and add_image_attention() on the CUDA backend enqueue on the caller's stream, never allocate
// once a resolution has been seen (or prepare_resolution() was called) and are CUDA-graph
// capturable.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "instantid/layout.hpp"
#include "instantid/model.hpp"
#include "instantid/tensor.hpp"

namespace instantid {

// ---- Options -----------------------------------------------------------------------------------

enum class EmbedsScaling : std::uint8_t { kVOnly, kKV, kKVCPenalty, kKMeanVCPenalty };
// "V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty" (ComfyUI's strings).
EmbedsScaling parse_embeds_scaling(std::string_view name);
const char* embeds_scaling_name(EmbedsScaling scaling);

enum class Combine : std::uint8_t { kAverage, kNormAverage, kConcat };
// "average", "norm average" (also "norm-average"), "concat".
Combine parse_combine(std::string_view name);
const char* combine_name(Combine combine);

// The sigma used when the host passes none: the patch is then active only if start_at == 0.
constexpr double kNoSigma = 999999999.9;

// A patch is active at sigma when end <= sigma <= start.
struct SigmaRange {
  double start = kNoSigma;
  double end = 0.0;
  bool contains(double sigma) const { return end <= sigma && sigma <= start; }
};

// ComfyUI's ModelSamplingDiscrete for SD1.x/SDXL (spec §6): scaled-linear betas 0.00085..0.012
// over 1000 steps, sigmas and log-sigmas stored as float32.
class DiscreteSchedule {
 public:
  DiscreteSchedule();
  // p <= 0 → 999999999.9; p >= 1 → 0; else log-linear interpolation in float32, with exp
  // computed as PyTorch's CPU kernel does (SLEEF expf_u10), so results equal ComfyUI's bit for bit.
  // Throws Error for NaN.
  float percent_to_sigma(float percent) const;
  const std::vector<float>& sigmas() const { return sigmas_; }
  const std::vector<float>& log_sigmas() const { return log_sigmas_; }

 private:
  std::vector<float> sigmas_;
  std::vector<float> log_sigmas_;
};

struct PatchOptions {
  float weight = 1.0f;    // any finite value; 0 disables the patch
  float start_at = 0.0f;  // in [0, 1], fraction of the schedule
  float end_at = 1.0f;    // in [start_at, 1]
  float noise = 0.0f;     // >= 0: strength of the uncond input noise (spec §2)
  EmbedsScaling embeds_scaling = EmbedsScaling::kVOnly;
  Combine combine = Combine::kAverage;
  // [M, Hm, Wm] float32 in [0, 1] at image resolution, or absent for no mask.
  std::optional<HostTensor> mask;
  // Explicit sigma range (other schedules, flow models); when absent, start_at/end_at are mapped
  // through DiscreteSchedule.
  std::optional<SigmaRange> sigma_range;
};

// Throws Error naming the first out-of-range field.
void validate(const PatchOptions& options);
SigmaRange resolve_sigma_range(const PatchOptions& options,
                               const DiscreteSchedule& schedule = DiscreteSchedule());

// ---- Projection (spec §2, §3) -----------------------------------------------------------------

struct ImageTokens {
  HostTensor cond;          // [1, 16·k, D_out]
  HostTensor uncond;        // [1, 16·k, D_out]
  HostTensor uncond_input;  // [k, 1, E]; k = N for Combine::kConcat, else 1
};

// CPU float32 Resampler over combined face embeddings `embeds` ([N, E] or [N, 1, E], raw ArcFace
// outputs). Exact up to float32 rounding; the noise draw is bit-exact with torch.
ImageTokens project_face_embeddings(const InstantIDModel& model, const HostTensor& embeds,
                                    Combine combine, float noise);

// ---- Backends ----------------------------------------------------------------------------------

enum class Backend : std::uint8_t { kCpu, kCuda };

struct BackendOptions {
  Backend backend = Backend::kCpu;
  int cuda_device = 0;
  DType cuda_dtype = DType::kF16;  // dtype of the ip K/V held on the GPU (f16 or bf16)
};

// True when this build has the CUDA backend and a device is visible.
bool cuda_available();

// ---- The per-layer call ------------------------------------------------------------------------

struct AttentionCall {
  TensorView q;    // [B, N, C], C = heads × 64
  TensorView k;    // [B, L, C] text keys (already projected by the UNet)
  TensorView v;    // [B, L, C] text values
  TensorView out;  // [B, N, C]: written by attention(), accumulated into by add_image_attention()
  LayerId layer;   // which of the layout's layers this is
  std::optional<double> sigma;  // absent → kNoSigma
  // G entries, 0 = cond and 1 = uncond per chunk of B / G images; null → one cond chunk.
  const int* cond_or_uncond = nullptr;
  int num_chunks = 0;
  int original_height = 0;  // latent height and width (oh, ow); needed only with a mask
  int original_width = 0;
  void* stream = nullptr;  // CUDA backend: the cudaStream_t to enqueue on (null = default)
};

class AttentionPatch {
 public:
  // Prepares one identity: combines `face_embeds` ([N, E] or [N, 1, E]), runs the Resampler for
  // cond and uncond, and computes the ip K/V of every layer once.
  AttentionPatch(const InstantIDModel& model, const HostTensor& face_embeds,
                 const PatchOptions& options, const BackendOptions& backend = {});
  // Same, from tokens already projected (e.g. by `instantid project`).
  AttentionPatch(const InstantIDModel& model, const ImageTokens& tokens,
                 const PatchOptions& options, const BackendOptions& backend = {});
  ~AttentionPatch();
  AttentionPatch(AttentionPatch&&) noexcept;
  AttentionPatch& operator=(AttentionPatch&&) noexcept;

  // Stacks another identity (own weight, mask, range, scaling) on every layer. All stacked
  // identities are applied in one pass over q.
  void stack(const InstantIDModel& model, const HostTensor& face_embeds,
             const PatchOptions& options);
  void stack(const InstantIDModel& model, const ImageTokens& tokens, const PatchOptions& options);

  // out = Attn(q, k, v) + Σ over active identities of the ip term (spec §4).
  void attention(const AttentionCall& call);
  // out += Σ over active identities of the ip term; for hosts that computed Attn(q, k, v) itself.
  void add_image_attention(const AttentionCall& call);

  // Precomputes the resized masks for a latent size so that later calls never allocate.
  void prepare_resolution(int original_height, int original_width);

  // Step bookkeeping: begin_step() forgets the layers reached so far; unreached_layers() lists the
  // layout's layers that no attention()/add_image_attention() call named since.
  void begin_step();
  std::vector<LayerId> unreached_layers() const;

  bool active_at(double sigma) const;  // is any identity active at this sigma?
  int num_identities() const;
  const ImageTokens& tokens(int identity) const;
  SigmaRange sigma_range(int identity) const;
  const ModelLayout& layout() const;
  Backend backend() const;
  std::size_t device_bytes() const;  // GPU memory held (0 on the CPU backend)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace instantid
