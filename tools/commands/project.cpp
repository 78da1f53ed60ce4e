// instantid project: face embeddings → InstantID image tokens (Resampler, cond and uncond).

#include <ostream>

#include "commands/args.hpp"
#include "commands/common.hpp"
#include "commands/registry.hpp"
#include "commands/tensor_io.hpp"
#include "instantid/patch.hpp"

namespace instantid::cli {
namespace {

int run_project(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  ArgParser parser(
      "project",
      "--checkpoint CKPT --embeds E.safetensors [--noise X] [--combine MODE] --out O.safetensors",
      "Runs the InstantID Resampler on face embeddings (spec §2, §3) and writes the image tokens:\n"
      "`cond`, `uncond` [1, 16·k, D_out] and `uncond_input` [k, 1, E] float32 (k = 1, or the\n"
      "number of images with --combine concat). E holds `embeds` float32 [N, E] or [N, 1, E], raw\n"
      "ArcFace outputs (e.g. from `instantid embed`).");
  parser.required("checkpoint", "CKPT", "InstantID checkpoint (ip-adapter.bin or .safetensors)")
      .required("embeds", "E.safetensors", "face embeddings, tensor `embeds` [N, E]")
      .option("noise", "X", "strength of the uncond input noise (>= 0)", "0")
      .option("combine", "MODE", "average | norm-average | concat", "average")
      .required("out", "O.safetensors", "output file");
  if (!parser.parse(args, out)) return kExitOk;

  const float noise = parser.get_float("noise");
  if (!(noise >= 0.0f)) throw UsageError("--noise: got " + parser.get("noise") + ", expected >= 0");
  Combine combine{};
  try {
    combine = parse_combine(parser.get("combine"));
  } catch (const Error& e) {
    throw UsageError(std::string("--combine: ") + e.what());
  }

  const std::string embeds_path = parser.get("embeds");
  const TensorMap inputs = read_tensors(embeds_path);
  const HostTensor& embeds = require_tensor(inputs, "embeds", embeds_path);
  const InstantIDModel model = load_model(parser.get("checkpoint"));
  const ImageTokens tokens = project_face_embeddings(model, embeds, combine, noise);

  const std::string out_path = parser.get("out");
  write_safetensors(out_path,
                    {{"cond", &tokens.cond},
                     {"uncond", &tokens.uncond},
                     {"uncond_input", &tokens.uncond_input}},
                    {{"producer", "instantid project"},
                     {"combine", combine_name(combine)},
                     {"noise", std::to_string(noise)}});
  out << "wrote " << out_path << ": cond " << tokens.cond.shape_str() << ", uncond "
      << tokens.uncond.shape_str() << ", uncond_input " << tokens.uncond_input.shape_str() << "\n";
  return kExitOk;
}

const Registrar kRegistrar(Command{"project", "face embeddings -> image tokens (Resampler)",
                                   run_project});

}  // namespace
}  // namespace instantid::cli
