// A miniature SDXL host: the places where a C++ diffusion engine calls InstantID.
//
//   sdxl_host CKPT [reduced]
//
// CKPT is an InstantID checkpoint (ip-adapter.bin / .safetensors); "reduced" loads the small
// test fixture layout (tests/data/reference/model.safetensors, widths /10) instead of SDXL's.
//
// The "UNet" here is a toy: per attn2 layer it derives queries from the latent, takes the text
// keys/values of its width, and calls the patch exactly as a real UNet's cross-attention would —
// with the layer's identity, the step's sigma, the CFG batch layout and the latent size. The
// sampler is Euler over ComfyUI's "simple" schedule with classifier-free guidance. What matters
// is the calling pattern (see docs/integration.md), not the toy's arithmetic.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "instantid/error.hpp"
#include "instantid/layout.hpp"
#include "instantid/model.hpp"
#include "instantid/patch.hpp"

using namespace instantid;

namespace {

// Deterministic values in [-scale, scale).
HostTensor noise(std::vector<std::int64_t> shape, std::uint32_t seed, float scale) {
  HostTensor t(std::move(shape));
  std::uint32_t s = seed * 2654435761u + 1u;
  for (float& x : t.values()) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x = (static_cast<float>(s >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
  }
  return t;
}

struct Level {           // what one attention width sees
  std::int64_t factor;   // latent downsampling at this level (2 for 640-wide, 4 for 1280-wide)
  HostTensor to_q;       // [4, C]: latent channels → query features (the toy's "UNet")
  HostTensor text_k;     // [2, 77, C]: text keys, batch rows (uncond, cond)
  HostTensor text_v;     // [2, 77, C]
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: sdxl_host CKPT [reduced]\n");
    return 2;
  }
  try {
    // ---- Once per generation: load, and prepare the identity ----
    const ModelLayout layout = (argc > 2 && std::string(argv[2]) == "reduced")
                                   ? ModelLayout::reduced(10, 64, 64, 1)
                                   : ModelLayout::sdxl();
    const InstantIDModel model = InstantIDModel::load(argv[1], layout);
    // A real host gets this from face analysis (instantid::face::FaceAnalysis or `instantid
    // embed`): the raw ArcFace embedding of the largest face, [N, 512].
    const HostTensor face_embeds = noise({1, layout.embed_dim}, 7, 1.5f);
    PatchOptions options;
    options.weight = 0.8f;
    options.noise = 0.35f;
    options.end_at = 0.9f;  // stop conditioning for the last 10% of the schedule
    AttentionPatch patch(model, face_embeds, options);  // Resampler + ip K/V of every layer

    const int latent_h = 32, latent_w = 24;  // a 256×192 image
    const int steps = 8;
    const float cfg = 5.0f;
    // CFG batching as ComfyUI does it: row 0 uncond, row 1 cond, so cond_or_uncond = [1, 0].
    const int cond_or_uncond[2] = {1, 0};
    patch.prepare_resolution(latent_h, latent_w);

    int widest = 0;
    for (const LayerInfo& l : layout.layers) widest = std::max(widest, l.width);
    std::map<int, Level> levels;
    for (const LayerInfo& l : layout.layers) {
      if (levels.count(l.width) != 0) continue;
      const auto w = static_cast<std::uint32_t>(l.width);
      levels[l.width] = Level{l.width == widest ? 4 : 2, noise({4, l.width}, w, 0.5f),
                              noise({2, 77, l.width}, w + 1, 1.0f),
                              noise({2, 77, l.width}, w + 2, 1.0f)};
    }

    // Sampler schedule: ComfyUI's "simple" over the SDXL discrete sigmas, then 0.
    const DiscreteSchedule schedule;
    std::vector<double> sigmas;
    for (int i = 0; i < steps; ++i) {
      sigmas.push_back(schedule.sigmas()[schedule.sigmas().size() - 1 -
                                         static_cast<std::size_t>(i * 1000 / steps)]);
    }
    sigmas.push_back(0.0);

    HostTensor latent = noise({4, latent_h, latent_w}, 1, static_cast<float>(sigmas[0]));
    bool all_reached = true;
    for (int step = 0; step < steps; ++step) {
      const double sigma = sigmas[static_cast<std::size_t>(step)];
      patch.begin_step();
      HostTensor eps({2, 4, latent_h, latent_w});  // uncond, cond
      // ---- The UNet: one attn2 call per layer, in the host's own order ----
      for (const LayerInfo& layer : layout.layers) {
        Level& level = levels.at(layer.width);
        const std::int64_t h = latent_h / level.factor, w = latent_w / level.factor;
        const std::int64_t n = h * w, c = layer.width;
        HostTensor q({2, n, c});  // both batch rows see the same latent
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t t = 0; t < n; ++t)
            for (std::int64_t j = 0; j < c; ++j) {
              float acc = 0.0f;
              for (int ch = 0; ch < 4; ++ch) {
                const std::int64_t y = (t / w) * level.factor, x = (t % w) * level.factor;
                acc += latent.data()[(ch * latent_h + y) * latent_w + x] / static_cast<float>(sigma + 1.0) *
                       level.to_q.data()[ch * c + j];
              }
              q.data()[(b * n + t) * c + j] = acc;
            }
        HostTensor out({2, n, c});
        AttentionCall call;
        call.q = q.view();
        call.k = level.text_k.view();
        call.v = level.text_v.view();
        call.out = out.view();
        call.layer = layer.id;            // which attn2 this is: (block, block id, transformer index)
        call.sigma = sigma;               // gates the identity by start_at / end_at
        call.cond_or_uncond = cond_or_uncond;
        call.num_chunks = 2;
        call.original_height = latent_h;  // the latent size, for masks
        call.original_width = latent_w;
        patch.attention(call);            // out = text attention + identity term
        // The toy folds the attention output back into its noise prediction.
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t t = 0; t < n; ++t) {
            const float mean = out.data()[(b * n + t) * c] / static_cast<float>(layout.num_layers());
            for (int ch = 0; ch < 4; ++ch)
              for (std::int64_t dy = 0; dy < level.factor; ++dy)
                for (std::int64_t dx = 0; dx < level.factor; ++dx) {
                  const std::int64_t y = (t / w) * level.factor + dy, x = (t % w) * level.factor + dx;
                  eps.data()[((b * 4 + ch) * latent_h + y) * latent_w + x] += mean;
                }
          }
      }
      // ---- CFG and an Euler step ----
      const double next = sigmas[static_cast<std::size_t>(step) + 1];
      const std::int64_t plane = 4LL * latent_h * latent_w;
      double change = 0.0;
      for (std::int64_t i = 0; i < plane; ++i) {
        const float e = eps.data()[i] + cfg * (eps.data()[plane + i] - eps.data()[i]);
        const float d = static_cast<float>(next - sigma) * e;
        latent.data()[i] += d;
        change += std::fabs(d);
      }
      const std::vector<LayerId> unreached = patch.unreached_layers();
      all_reached = all_reached && unreached.empty();
      std::printf("step %d  sigma %8.4f  identity %-8s  mean |dx| %.5f  unreached %zu\n", step + 1,
                  sigma, patch.active_at(sigma) ? "active" : "inactive",
                  change / static_cast<double>(plane), unreached.size());
      for (const LayerId& id : unreached) std::printf("  never called: %s\n", layer_id_string(id).c_str());
    }
    if (all_reached) {
      std::printf("all %d layers reached at every step\n", layout.num_layers());
    }
    return all_reached ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "sdxl_host: %s\n", e.what());
    return 1;
  }
}
