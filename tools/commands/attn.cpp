// instantid attn: one patched cross-attention (attn2) call of one layer (spec §4) through the
// AttentionPatch API, on tensors read from files.

#include <optional>
#include <ostream>

#include "commands/args.hpp"
#include "commands/common.hpp"
#include "commands/device_buffer.hpp"
#include "commands/registry.hpp"
#include "commands/tensor_io.hpp"
#include "instantid/patch.hpp"

namespace instantid::cli {
namespace {

int run_attn(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  ArgParser parser(
      "attn",
      "--checkpoint CKPT --tokens O.safetensors --inputs IN.safetensors --layer n "
      "--out OUT.safetensors [options]",
      "Runs the patched attn2 of layer n (0-based, host call order; spec §4, §5) through\n"
      "AttentionPatch: out = Attn(q, k, v) + the weighted, gated, masked image-token term.\n"
      "IN holds `q` [B, N, C] and `k`, `v` [B, L, C]; TOKENS is the output of `instantid\n"
      "project`; MASK holds `mask` [M, H, W] in [0, 1]. OUT gets `out` [B, N, C] float32.");
  parser.required("checkpoint", "CKPT", "InstantID checkpoint")
      .required("tokens", "O.safetensors", "image tokens from `instantid project`")
      .required("inputs", "IN.safetensors", "tensors q, k, v")
      .required("layer", "n", "layer index in host call order (0..69 for SDXL)")
      .required("out", "OUT.safetensors", "output file")
      .option("weight", "w", "patch weight", "1")
      .option("sigma", "s", "current sigma (default: none, i.e. 999999999.9)")
      .option("start-at", "a", "start of the active range, fraction of the schedule", "0")
      .option("end-at", "b", "end of the active range, fraction of the schedule", "1")
      .option("mask", "MASK.safetensors", "attention mask, tensor `mask` [M, H, W]")
      .option("cond-or-uncond", "LIST", "per batch chunk: 0 = cond, 1 = uncond (default: 0)")
      .option("original-size", "oh,ow", "latent height and width (needed with --mask)")
      .option("embeds-scaling", "MODE",
              "\"V only\" | \"K+V\" | \"K+V w/ C penalty\" | \"K+mean(V) w/ C penalty\"", "V only")
      .option("device", "DEV", "cpu | cuda", "cpu")
      .option("dtype", "T", "dtype of q/k/v/out handed to the patch: f32 | f16 | bf16", "f32");
  if (!parser.parse(args, out)) return kExitOk;

  PatchOptions options;
  options.weight = parser.get_float("weight");
  options.start_at = parser.get_float("start-at");
  options.end_at = parser.get_float("end-at");
  try {
    options.embeds_scaling = parse_embeds_scaling(parser.get("embeds-scaling"));
  } catch (const Error& e) {
    throw UsageError(std::string("--embeds-scaling: ") + e.what());
  }
  const DType dtype = parse_dtype(parser.get("dtype"), "--dtype");
  const std::string device_arg = parser.get("device");
  BackendOptions backend;
  Device device{};
  if (device_arg == "cuda") {
    backend.backend = Backend::kCuda;
    device = Device{DeviceType::kCuda, 0};
    if (dtype == DType::kF32) {
      throw UsageError("--dtype: got f32 with --device cuda, expected f16 or bf16 (the CUDA "
                       "backend computes on half-precision q/k/v)");
    }
    backend.cuda_dtype = dtype;
  } else if (device_arg != "cpu") {
    throw UsageError("--device: got '" + device_arg + "', expected cpu or cuda");
  }
  std::vector<int> cond_or_uncond;
  if (parser.has("cond-or-uncond")) {
    cond_or_uncond = parser.get_int_list("cond-or-uncond");
    for (int entry : cond_or_uncond) {
      if (entry != 0 && entry != 1) {
        throw UsageError("--cond-or-uncond: got " + parser.get("cond-or-uncond") +
                         ", expected a comma-separated list of 0 (cond) and 1 (uncond)");
      }
    }
  }
  int original_height = 0, original_width = 0;
  if (parser.has("original-size")) {
    const std::vector<int> size = parser.get_int_list("original-size");
    if (size.size() != 2 || size[0] <= 0 || size[1] <= 0) {
      throw UsageError("--original-size: got '" + parser.get("original-size") +
                       "', expected two positive integers oh,ow");
    }
    original_height = size[0];
    original_width = size[1];
  }

  if (parser.has("mask")) {
    const std::string mask_path = parser.get("mask");
    options.mask = require_tensor(read_tensors(mask_path), "mask", mask_path);
  }
  const std::string tokens_path = parser.get("tokens");
  const TensorMap token_file = read_tensors(tokens_path);
  ImageTokens tokens;
  tokens.cond = require_tensor(token_file, "cond", tokens_path);
  tokens.uncond = require_tensor(token_file, "uncond", tokens_path);
  if (token_file.count("uncond_input") != 0) tokens.uncond_input = token_file.at("uncond_input");
  const std::string inputs_path = parser.get("inputs");
  const TensorMap inputs = read_tensors(inputs_path);
  const HostTensor& q = require_tensor(inputs, "q", inputs_path);
  const HostTensor& k = require_tensor(inputs, "k", inputs_path);
  const HostTensor& v = require_tensor(inputs, "v", inputs_path);

  const InstantIDModel model = load_model(parser.get("checkpoint"));
  const int layer_index = parser.get_int("layer");
  if (layer_index < 0 || layer_index >= model.layout().num_layers()) {
    throw UsageError("--layer: got " + std::to_string(layer_index) + ", expected 0.." +
                     std::to_string(model.layout().num_layers() - 1));
  }

  AttentionPatch patch(model, tokens, options, backend);
  const TensorBuffer q_buffer(q, dtype, device), k_buffer(k, dtype, device),
      v_buffer(v, dtype, device);
  const TensorBuffer out_buffer(q.shape(), dtype, device);
  AttentionCall call;
  call.q = q_buffer.view();
  call.k = k_buffer.view();
  call.v = v_buffer.view();
  call.out = out_buffer.view();
  call.layer = model.layout().layers[static_cast<std::size_t>(layer_index)].id;
  if (parser.has("sigma")) call.sigma = parser.get_double("sigma");
  if (!cond_or_uncond.empty()) {
    call.cond_or_uncond = cond_or_uncond.data();
    call.num_chunks = static_cast<int>(cond_or_uncond.size());
  }
  call.original_height = original_height;
  call.original_width = original_width;
  patch.attention(call);
  device_synchronize(device);
  const HostTensor result = out_buffer.to_host();

  const std::string out_path = parser.get("out");
  const double sigma = call.sigma.value_or(kNoSigma);
  write_safetensors(out_path, {{"out", &result}},
                    {{"producer", "instantid attn"},
                     {"layer", layer_id_string(call.layer)},
                     {"device", device_name(device)},
                     {"dtype", dtype_name(dtype)}});
  out << "wrote " << out_path << ": out " << result.shape_str() << " (layer "
      << layer_id_string(call.layer) << ", patch " << (patch.active_at(sigma) ? "active" : "inactive")
      << " at sigma " << sigma << ", " << device_name(device) << ", " << dtype_name(dtype) << ")\n";
  return kExitOk;
}

const Registrar kRegistrar(Command{"attn", "one patched attn2 call of one layer", run_attn});

}  // namespace
}  // namespace instantid::cli
