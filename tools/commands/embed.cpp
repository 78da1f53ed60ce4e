// instantid embed: face detection + recognition of images with an insightface model folder, the
// way ComfyUI_InstantID extracts its identity embedding (detection sizes 640..192, largest face).

#include <cmath>
#include <exception>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands/registry.hpp"
#include "instantid/error.hpp"
#include "instantid/face/analysis.hpp"
#include "instantid/face/image.hpp"
#include "instantid/face/safetensors_writer.hpp"
#include "commands/sdcpp_id_embeds.hpp"

namespace instantid::cli {
namespace {

constexpr const char* kEmbedUsage =
    "usage: instantid embed --models DIR [--device cpu|cuda[:N]] [--det-size S] [--out FILE.safetensors]\n"
    "                       [--json] IMAGE...\n"
    "  Detects faces (SCRFD) and computes the raw ArcFace embedding of the largest face of each image,\n"
    "  as ComfyUI_InstantID does. DIR is an insightface model folder (antelopev2, buffalo_l, ...).\n"
    "  --det-size S   only try detection size S (multiple of 32); default: 640, 576, ..., 192 until a face is found\n"
    "  --out FILE     write tensor `embeds` [N_found, D] float32 (safetensors)\n"
    "  --sdcpp-id-embeds FILE  also write the embeddings for stable-diffusion.cpp PhotoMaker v2:\n"
    "                 id_embeds.bin, or id_embeds.safetensors when FILE ends in .safetensors\n"
    "  --json         print {\"images\": [...]} with boxes, scores, keypoints and embeddings\n"
    "  exit codes: 0 ok, 1 failure, 2 bad command line, 3 no face in at least one image\n";

struct EmbedArgs {
  std::string models;
  Device device{};
  std::vector<int> sizes = face::kComfyDetSizes;
  std::string out;
  std::string sdcpp_id_embeds;
  bool json = false;
  std::vector<std::string> images;
};

struct UsageProblem {
  std::string message;
};

int parse_int(const std::string& text, const std::string& what) {
  std::size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) throw UsageProblem{what + ": got '" + text + "', expected an integer"};
  return value;
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device{DeviceType::kCpu, 0};
  if (text == "cuda") return Device{DeviceType::kCuda, 0};
  if (text.rfind("cuda:", 0) == 0) {
    const int index = parse_int(text.substr(5), "--device index");
    if (index < 0) throw UsageProblem{"--device: got '" + text + "', expected cpu, cuda or cuda:N"};
    return Device{DeviceType::kCuda, index};
  }
  throw UsageProblem{"--device: got '" + text + "', expected cpu, cuda or cuda:N"};
}

EmbedArgs parse_args(const std::vector<std::string>& args, bool* help) {
  EmbedArgs a;
  *help = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    std::string value;
    bool has_inline = false;
    if (arg.rfind("--", 0) == 0) {
      const std::size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        has_inline = true;
      }
    }
    auto take = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= args.size()) throw UsageProblem{arg + ": missing value"};
      return args[++i];
    };
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return a;
    } else if (arg == "--models") {
      a.models = take();
    } else if (arg == "--device") {
      a.device = parse_device(take());
    } else if (arg == "--det-size") {
      const int s = parse_int(take(), "--det-size");
      if (s <= 0 || s % 32 != 0) {
        throw UsageProblem{"--det-size: got " + std::to_string(s) + ", expected a positive multiple of 32"};
      }
      a.sizes = {s};
    } else if (arg == "--out") {
      a.out = take();
    } else if (arg == "--sdcpp-id-embeds") {
      a.sdcpp_id_embeds = take();
    } else if (arg == "--json") {
      if (has_inline) throw UsageProblem{"--json takes no value"};
      a.json = true;
    } else if (arg.rfind("-", 0) == 0 && arg.size() > 1) {
      throw UsageProblem{"unknown option '" + arg + "'"};
    } else {
      a.images.push_back(args[i]);
    }
  }
  if (a.models.empty()) throw UsageProblem{"--models DIR is required"};
  if (a.images.empty()) throw UsageProblem{"no IMAGE given, expected at least one"};
  return a;
}

nlohmann::json face_json(const face::DetectedFace& f) {
  nlohmann::json kps = nlohmann::json::array();
  for (int k = 0; k < 5; ++k) kps.push_back({f.kps[2 * k], f.kps[2 * k + 1]});
  return {{"bbox", {f.bbox[0], f.bbox[1], f.bbox[2], f.bbox[3]}}, {"score", f.score}, {"kps", kps}};
}

int run_embed(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  EmbedArgs a;
  try {
    bool help = false;
    a = parse_args(args, &help);
    if (help) {
      out << kEmbedUsage;
      return kExitOk;
    }
  } catch (const UsageProblem& p) {
    err << "instantid embed: " << p.message << "\n" << kEmbedUsage;
    return kExitUsage;
  }
  try {
    face::AnalysisOptions options;
    options.device = a.device;
    const face::FaceAnalysis analysis = face::FaceAnalysis::load(a.models, options);
    nlohmann::json images = nlohmann::json::array();
    std::vector<float> embeds;
    std::int64_t found = 0;
    std::int64_t dim = 0;
    bool missing = false;
    for (const std::string& path : a.images) {
      const face::Image image = face::load_image(path);
      const face::ImageFaces r = analysis.extract({image}, a.sizes).front();
      nlohmann::json entry = {{"path", path}, {"width", r.width}, {"height", r.height}};
      entry["det_size"] = r.det_size ? nlohmann::json(*r.det_size) : nlohmann::json(nullptr);
      nlohmann::json faces = nlohmann::json::array();
      for (const auto& f : r.faces) faces.push_back(face_json(f));
      entry["faces"] = faces;
      entry["selected"] = r.selected ? nlohmann::json(*r.selected) : nlohmann::json(nullptr);
      entry["embedding"] = r.embedding.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.embedding);
      images.push_back(entry);
      if (!r.det_size) {
        missing = true;
        err << "instantid embed: " << path << ": no face detected\n";
        if (!a.json) out << path << ": " << r.width << "x" << r.height << ", no face\n";
        continue;
      }
      dim = static_cast<std::int64_t>(r.embedding.size());
      ++found;
      embeds.insert(embeds.end(), r.embedding.begin(), r.embedding.end());
      if (!a.json) {
        double norm = 0.0;
        for (float v : r.embedding) norm += static_cast<double>(v) * v;
        const auto& f = r.faces[*r.selected];
        out << path << ": " << r.width << "x" << r.height << ", " << r.faces.size()
            << " face(s) at det size " << *r.det_size << ", selected " << *r.selected << " (score "
            << f.score << ", box " << f.bbox[0] << "," << f.bbox[1] << "," << f.bbox[2] << ","
            << f.bbox[3] << "), embedding " << dim << "-d, norm " << std::sqrt(norm) << "\n";
      }
    }
    if (!a.out.empty()) {
      face::write_safetensors(a.out, {{"embeds", {found, dim}, embeds}});
    }
    if (!a.sdcpp_id_embeds.empty()) {
      if (found == 0) {
        err << "instantid embed: " << a.sdcpp_id_embeds << ": not written, no face in any image\n";
      } else {
        write_sdcpp_id_embeds(a.sdcpp_id_embeds, HostTensor({found, dim}, embeds));
      }
    }
    if (a.json) out << nlohmann::json{{"images", images}}.dump() << "\n";
    return missing ? kExitNoFace : kExitOk;
  } catch (const Error& e) {
    err << "instantid embed: " << e.what() << "\n";
    return kExitFailure;
  }
}

const Registrar kEmbedRegistrar(Command{
    "embed", "face detection + ArcFace embedding of images (ComfyUI_InstantID's extraction)", run_embed});

}  // namespace
}  // namespace instantid::cli
