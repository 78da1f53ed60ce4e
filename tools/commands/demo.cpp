// instantid demo: the library's main job, end to end, on a built-in default.
//
// Without arguments: a synthetic checkpoint with SDXL's structure and deterministic random weights
// (said so in the output), one synthetic identity, and a 20-step SDXL-shaped host loop calling the
// AttentionPatch at all 70 attn2 layers with CFG batching (cond_or_uncond = [1, 0], B = 2). On a
// GPU it runs the real SDXL shapes at 1024×1024 in f16; on the CPU a reduced layout and size.
// Some calls are recomputed with the CPU reference (instantid::ref) and the largest error is
// reported; every step reports the layers the host never reached.
//
// With --checkpoint, --models and --image: the real pipeline (face → embedding → patch → steps).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "commands/args.hpp"
#include "commands/common.hpp"
#include "commands/device_buffer.hpp"
#include "commands/registry.hpp"
#include "instantid/error.hpp"
#ifdef INSTANTID_CLI_HAS_FACE
#include "instantid/face/analysis.hpp"
#include "instantid/face/image.hpp"
#endif
#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "instantid/reference.hpp"

namespace instantid::cli {
namespace {

using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// ComfyUI's "simple" scheduler over the discrete SDXL schedule: every (1000/steps)-th sigma from
// the top, then 0.
std::vector<double> simple_sigmas(int steps) {
  const DiscreteSchedule schedule;
  const std::vector<float>& table = schedule.sigmas();
  std::vector<double> sigmas;
  const double stride = static_cast<double>(table.size()) / steps;
  for (int i = 0; i < steps; ++i) {
    const auto index = static_cast<std::size_t>(static_cast<double>(i) * stride);
    sigmas.push_back(table[table.size() - 1 - index]);
  }
  return sigmas;
}

// Tokens per layer for a latent of (h, w): SDXL's attn2 layers see the latent downsampled by
// 2 (640-wide levels) or 4 (1280-wide levels).
std::int64_t tokens_for_width(int width, int widest, int latent_h, int latent_w) {
  const int factor = width == widest ? 4 : 2;
  return static_cast<std::int64_t>(latent_h / factor) * (latent_w / factor);
}

// The expected output of one call, from the reference functions alone (spec §4): text attention
// plus, when the identity is active, the ip attention of each batch row's chunk.
HostTensor reference_output(const InstantIDModel& model, const ImageTokens& tokens,
                            const PatchOptions& options, bool active, int layer_index,
                            const HostTensor& q, const HostTensor& k, const HostTensor& v,
                            const std::vector<int>& cond_or_uncond) {
  HostTensor expected = ref::attention(q, k, v);
  if (!active) return expected;
  const ref::IpKeyValues ip =
      ref::ip_key_values(model, tokens, layer_index, options.embeds_scaling, options.weight);
  const float scale = ref::ip_output_scale(options.embeds_scaling, options.weight);
  const std::int64_t batch = q.size(0), n = q.size(1), c = q.size(2);
  const std::int64_t per_chunk = batch / static_cast<std::int64_t>(cond_or_uncond.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    const bool uncond = cond_or_uncond[static_cast<std::size_t>(b / per_chunk)] == 1;
    const HostTensor& ip_k = uncond ? ip.k_uncond : ip.k_cond;
    const HostTensor& ip_v = uncond ? ip.v_uncond : ip.v_cond;
    std::vector<float> row(q.data() + b * n * c, q.data() + (b + 1) * n * c);
    const HostTensor q_row({1, n, c}, std::move(row));
    const HostTensor term = ref::attention(q_row, ip_k.reshaped({1, ip_k.size(0), ip_k.size(1)}),
                                           ip_v.reshaped({1, ip_v.size(0), ip_v.size(1)}));
    for (std::int64_t i = 0; i < n * c; ++i)
      expected.data()[b * n * c + i] += scale * term.data()[i];
  }
  return expected;
}

// Values as the device saw them: rounded to `dtype` and back.
HostTensor rounded(const HostTensor& values, DType dtype) {
  if (dtype == DType::kF32) return values;
  HostTensor result = values;
  for (float& value : result.values()) {
    value = dtype == DType::kF16 ? half_to_float(float_to_half(value))
                                 : bfloat16_to_float(float_to_bfloat16(value));
  }
  return result;
}

struct Inputs {
  HostTensor q, k, v;
  std::unique_ptr<TensorBuffer> q_buffer, k_buffer, v_buffer, out_buffer;
};

int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  ArgParser parser(
      "demo", "[--device auto|cpu|cuda] [--steps n] [--checkpoint CKPT --models DIR --image IMG]",
      "Runs InstantID's conditioning the way a diffusion engine does: an identity is projected\n"
      "once, then a host loop calls the AttentionPatch at all attn2 layers of every step with CFG\n"
      "batching. Prints per-step times, the largest error against the CPU reference, and which\n"
      "layers the host never reached.\n\n"
      "Without --checkpoint the checkpoint is SYNTHETIC: SDXL's structure with deterministic\n"
      "random weights (no real identity is transferred; the point is shapes, timing and\n"
      "correctness). With --checkpoint, --models (an insightface model folder such as antelopev2)\n"
      "and --image, the identity comes from the face in the image.");
  parser.option("device", "DEV", "auto (cuda when a GPU is visible) | cpu | cuda", "auto")
      .option("steps", "n", "sampler steps", "20")
      .option("size", "HxW",
              "image size in pixels (default 1024x1024 on the GPU, 256x256 on the CPU)")
      .option("weight", "w", "patch weight", "0.8")
      .option("noise", "X", "uncond input noise", "0.35")
      .option("start-at", "a", "start of the active range", "0")
      .option("end-at", "b", "end of the active range", "1")
      .option("dtype", "T", "q/k/v dtype on the GPU: f16 | bf16 (the CPU uses f32)", "f16")
      .option("seed", "S", "seed of the synthetic weights and inputs", "42")
      .option("checkpoint", "CKPT", "a real InstantID checkpoint (ip-adapter.bin)")
      .option("models", "DIR", "insightface model folder (detector + recogniser .onnx)")
      .option("image", "IMG", "a photo with a face");
  if (!parser.parse(args, out)) return kExitOk;

  const bool real = parser.has("checkpoint") || parser.has("models") || parser.has("image");
  if (real && !(parser.has("checkpoint") && parser.has("models") && parser.has("image"))) {
    throw UsageError(
        "--checkpoint, --models and --image: got only some of them, expected all "
        "three (or none for the synthetic demo)");
  }
  const int steps = parser.get_int("steps");
  if (steps < 1 || steps > 1000) {
    throw UsageError("--steps: got " + parser.get("steps") + ", expected 1..1000");
  }
  const std::string device_arg = parser.get("device");
  bool use_cuda = false;
  if (device_arg == "auto") {
    use_cuda = cuda_available();
  } else if (device_arg == "cuda") {
    if (!cuda_available()) {
      throw Error(make_message("--device cuda: got no visible CUDA device (built ",
                               cli_has_cuda() ? "with" : "without",
                               " CUDA), expected one; use --device cpu"));
    }
    use_cuda = true;
  } else if (device_arg != "cpu") {
    throw UsageError("--device: got '" + device_arg + "', expected auto, cpu or cuda");
  }
  const DType dtype = use_cuda ? parse_dtype(parser.get("dtype"), "--dtype") : DType::kF32;
  if (use_cuda && dtype == DType::kF32) {
    throw UsageError("--dtype: got f32, expected f16 or bf16 on the GPU");
  }
  const Device device = use_cuda ? Device{DeviceType::kCuda, 0} : Device{};
  const auto seed = static_cast<std::uint64_t>(parser.get_int("seed"));

  int image_h = use_cuda ? 1024 : 256, image_w = image_h;
  if (parser.has("size")) {
    const std::string size = parser.get("size");
    const std::size_t x = size.find('x');
    if (x == std::string::npos) throw UsageError("--size: got '" + size + "', expected HxW");
    image_h = static_cast<int>(parse_integer(size.substr(0, x), "--size height"));
    image_w = static_cast<int>(parse_integer(size.substr(x + 1), "--size width"));
    if (image_h < 32 || image_w < 32 || image_h % 32 != 0 || image_w % 32 != 0 || image_h > 4096 ||
        image_w > 4096) {
      throw UsageError("--size: got '" + size + "', expected multiples of 32 in 32..4096");
    }
  }
  const int latent_h = image_h / 8, latent_w = image_w / 8;

  PatchOptions options;
  options.weight = parser.get_float("weight");
  options.noise = parser.get_float("noise");
  options.start_at = parser.get_float("start-at");
  options.end_at = parser.get_float("end-at");
  validate(options);

  // ---- Model and identity ----
  const Clock::time_point setup_start = Clock::now();
  std::optional<InstantIDModel> model;
  HostTensor embeds;
  if (real) {
    out << "checkpoint: " << parser.get("checkpoint") << "\n";
    model = load_model(parser.get("checkpoint"));
#ifdef INSTANTID_CLI_HAS_FACE
    const face::FaceAnalysis analysis = face::FaceAnalysis::load(parser.get("models"));
    const face::Image image = face::load_image(parser.get("image"));
    const face::ImageFaces faces =
        analysis.extract_one(image, face::kComfyDetSizes, parser.get("image"));
    out << "face: " << faces.faces.size() << " detected at size " << faces.det_size.value_or(0)
        << ", largest embedded (" << faces.embedding.size() << " values)\n";
    embeds = HostTensor({1, static_cast<std::int64_t>(faces.embedding.size())}, faces.embedding);
#else
    throw Error("--models/--image: got a build without the face component, expected one");
#endif
  } else {
    const ModelLayout layout =
        use_cuda ? ModelLayout::sdxl() : ModelLayout::reduced(10, 512, 256, 4);
    const int output_dim = use_cuda ? 2048 : 256;
    out << "checkpoint: SYNTHETIC - deterministic random weights (seed " << seed
        << "), not a trained model\n";
    model = InstantIDModel::synthetic(layout, output_dim, seed);
    embeds = synthetic_uniform({1, layout.embed_dim}, 1.7f, 0.0f, synthetic_stream("face", seed));
    out << "identity: SYNTHETIC face embedding [1, " << layout.embed_dim << "]\n";
  }
  const ModelLayout& layout = model->layout();
  out << "layout: " << describe_layout(layout) << ", D_out " << model->output_dim() << "\n";
  if (!use_cuda) {
    out << "device: cpu (" << (cuda_available() ? "--device cpu" : "no CUDA device visible") << ")"
        << (real ? "" : ": reduced layout and image size to keep the CPU run short") << "\n";
  } else {
    out << "device: cuda:0, q/k/v " << dtype_name(dtype) << "\n";
  }
  out << "image: " << image_h << "x" << image_w << " (latent " << latent_h << "x" << latent_w
      << "), batch 2 (cond_or_uncond = [1, 0]), " << steps << " steps\n";

  BackendOptions backend;
  backend.backend = use_cuda ? Backend::kCuda : Backend::kCpu;
  backend.cuda_dtype = use_cuda ? dtype : DType::kF16;
  AttentionPatch patch(*model, embeds, options, backend);
  const SigmaRange range = patch.sigma_range(0);
  out << "patch: weight " << options.weight << ", noise " << options.noise
      << ", active for sigma in [" << range.end << ", " << range.start << "]; prepared in "
      << elapsed_ms(setup_start) << " ms (checkpoint, Resampler, ip K/V of " << layout.num_layers()
      << " layers)\n";

  // ---- Host inputs: one q/k/v per layer width (an SDXL attn2 sees the same shapes per level) ----
  int widest = 0;
  for (const LayerInfo& layer : layout.layers) widest = std::max(widest, layer.width);
  const std::int64_t batch = 2, text_tokens = 77;
  std::map<int, Inputs> inputs;
  for (const LayerInfo& layer : layout.layers) {
    if (inputs.count(layer.width) != 0) continue;
    const std::int64_t n = tokens_for_width(layer.width, widest, latent_h, latent_w);
    const std::uint64_t s =
        synthetic_stream("inputs", seed + static_cast<std::uint64_t>(layer.width));
    Inputs& in = inputs[layer.width];
    in.q = rounded(synthetic_uniform({batch, n, layer.width}, 1.0f, 0.0f, s), dtype);
    in.k = rounded(synthetic_uniform({batch, text_tokens, layer.width}, 1.0f, 0.0f, s + 1), dtype);
    in.v = rounded(synthetic_uniform({batch, text_tokens, layer.width}, 1.0f, 0.0f, s + 2), dtype);
    in.q_buffer = std::make_unique<TensorBuffer>(in.q, dtype, device);
    in.k_buffer = std::make_unique<TensorBuffer>(in.k, dtype, device);
    in.v_buffer = std::make_unique<TensorBuffer>(in.v, dtype, device);
    in.out_buffer = std::make_unique<TensorBuffer>(in.q.shape(), dtype, device);
  }
  patch.prepare_resolution(latent_h, latent_w);

  // ---- The sampler loop ----
  const std::vector<int> cond_or_uncond = {1, 0};
  const std::vector<double> sigmas = simple_sigmas(steps);
  // Calls checked against the reference: one layer per step in rotation, plus on the CPU every
  // layer of the first and last step (at SDXL size on the GPU the float32 CPU reference would take
  // far longer than the run, so there it checks the first and last layer of the first step).
  const int last_layer = layout.num_layers() - 1;
  auto checked = [&](int step, int layer) {
    if (layer == (step * 7) % layout.num_layers()) return true;
    if (use_cuda) return step == 0 && (layer == 0 || layer == last_layer);
    return step == 0 || step == steps - 1;
  };
  auto make_call = [&](int index, double sigma) {
    const LayerInfo& layer = layout.layers[static_cast<std::size_t>(index)];
    Inputs& in = inputs.at(layer.width);
    AttentionCall call;
    call.q = in.q_buffer->view();
    call.k = in.k_buffer->view();
    call.v = in.v_buffer->view();
    call.out = in.out_buffer->view();
    call.layer = layer.id;  // the layer's identity: (block, block id, transformer index)
    call.sigma = sigma;
    call.cond_or_uncond = cond_or_uncond.data();
    call.num_chunks = static_cast<int>(cond_or_uncond.size());
    call.original_height = latent_h;
    call.original_width = latent_w;
    return call;
  };
  double max_error = 0.0, max_reference = 0.0;
  int checks = 0;
  std::vector<double> step_ms;
  int steps_missing_layers = 0;
  out << "\nstep  sigma      patch     time (ms)  unreached layers\n";
  for (int step = 0; step < steps; ++step) {
    const double sigma = sigmas[static_cast<std::size_t>(step)];
    patch.begin_step();
    std::vector<std::pair<int, HostTensor>> to_check;
    // The host's step: 70 calls enqueued back to back (on the GPU, asynchronously on the default
    // stream), timed up to the end of the last one.
    const Clock::time_point start = Clock::now();
    for (int index = 0; index < layout.num_layers(); ++index)
      patch.attention(make_call(index, sigma));
    device_synchronize(device);
    const double compute_ms = elapsed_ms(start);
    // Calls to check are run again (untimed) and their outputs copied out: layers of one width
    // share the output buffer.
    for (int index = 0; index < layout.num_layers(); ++index) {
      if (!checked(step, index)) continue;
      patch.attention(make_call(index, sigma));
      to_check.emplace_back(
          index,
          inputs.at(layout.layers[static_cast<std::size_t>(index)].width).out_buffer->to_host());
    }
    step_ms.push_back(compute_ms);
    const bool active = range.contains(sigma) && options.weight != 0.0f;
    for (const auto& [index, result] : to_check) {
      const Inputs& in = inputs.at(layout.layers[static_cast<std::size_t>(index)].width);
      const HostTensor expected = reference_output(*model, patch.tokens(0), options, active, index,
                                                   in.q, in.k, in.v, cond_or_uncond);
      for (std::int64_t i = 0; i < expected.numel(); ++i) {
        const double diff = std::fabs(static_cast<double>(result.data()[i]) - expected.data()[i]);
        max_error = std::isnan(diff) ? INFINITY : std::max(max_error, diff);
        max_reference = std::max(max_reference, std::fabs(static_cast<double>(expected.data()[i])));
      }
      ++checks;
    }
    const std::vector<LayerId> unreached = patch.unreached_layers();
    if (!unreached.empty()) ++steps_missing_layers;
    char line[128];
    std::snprintf(line, sizeof(line), "%4d  %-9.4f  %-8s  %9.2f  ", step + 1, sigma,
                  active ? "active" : "inactive", compute_ms);
    out << line << (unreached.empty() ? std::string("none") : std::to_string(unreached.size()))
        << "\n";
  }
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const double per_call_us = median * 1000.0 / layout.num_layers();
  out << "\ntime per step (" << layout.num_layers() << " attn2 calls, " << device_name(device)
      << "): median " << median << " ms, " << per_call_us << " us per call\n";

  // ---- The check against the CPU reference ----
  const double normalised = max_reference > 0 ? max_error / max_reference : max_error;
  const double tolerance = dtype == DType::kF32 ? 1e-4 : dtype == DType::kF16 ? 2e-2 : 6e-2;
  const bool ok = normalised <= tolerance;
  out << "check against the CPU reference (instantid::ref, float32) on " << checks
      << " calls: max |error| " << max_error << ", max |reference| " << max_reference
      << ", normalised " << normalised << " (tolerance " << tolerance << " for "
      << dtype_name(dtype) << "): " << (ok ? "PASS" : "FAIL") << "\n";
  if (!use_cuda) {
    out << "  (the CPU backend is built from these reference functions, so its error is ~0; on a "
           "GPU "
           "this check measures the CUDA kernels)\n";
  }

  // ---- The unreached-layers report, with a host that gets the middle block wrong ----
  patch.begin_step();
  for (int index = 0; index < layout.num_layers(); ++index) {
    if (layout.layers[static_cast<std::size_t>(index)].id.block == BlockType::kMiddle) {
      continue;  // never reached by this host
    }
    patch.attention(make_call(index, sigmas.front()));
  }
  device_synchronize(device);
  const std::vector<LayerId> missed = patch.unreached_layers();
  if (steps_missing_layers == 0) {
    out << "unreached-layers report: every step above reached all " << layout.num_layers()
        << " layers.";
  } else {
    out << "unreached-layers report: " << steps_missing_layers << " step(s) above missed layers.";
  }
  out << " A host that never calls the middle block (as ComfyUI's ApplyInstantID does, "
         "addressing it as middle 1.i) would be told: "
      << missed.size() << " unreached";
  for (std::size_t i = 0; i < missed.size(); ++i) {
    out << (i == 0 ? ": " : ", ") << layer_id_string(missed[i]);
  }
  out << "\n";
  return ok && steps_missing_layers == 0 ? kExitOk : kExitFailure;
}

const Registrar kRegistrar(Command{"demo", "the patch in a 20-step SDXL-shaped host loop",
                                   run_demo});

}  // namespace
}  // namespace instantid::cli
