// instantid inspect FILE: what a file is — a checkpoint (tensors, and whether it is a valid
// InstantID checkpoint), an ONNX model (inputs, outputs, op counts, insightface role), or a
// stable-diffusion.cpp id_embeds.bin.

#include <onnx/onnx_pb.h>

#include <cstring>
#include <fstream>
#include <map>
#include <ostream>
#include <sstream>

#include "commands/args.hpp"
#include "commands/common.hpp"
#include "commands/registry.hpp"
#include "commands/sdcpp_id_embeds.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"
#include "instantid/model.hpp"

namespace instantid::cli {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(make_message(path, ": cannot open: got no readable file, expected one"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string dims_string(const std::vector<std::int64_t>& shape) { return shape_string(shape); }

bool looks_like_safetensors(const std::string& bytes) {
  if (bytes.size() < 10) return false;
  std::uint64_t length = 0;
  for (int i = 0; i < 8; ++i) {
    length |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  }
  return length >= 2 && length <= bytes.size() - 8 && bytes[8] == '{';
}

bool looks_like_sdcpp_id_embeds(const std::string& bytes) {
  if (bytes.size() < 12) return false;
  std::int32_t head[3];
  std::memcpy(head, bytes.data(), sizeof(head));
  return head[0] >= 1 && head[0] <= 4 && head[1] >= 0 && head[1] <= 4096 && head[2] == 0;
}

void inspect_checkpoint(const std::string& path, std::ostream& out) {
  const CheckpointFile file = CheckpointFile::open(path);
  out << "format: " << checkpoint_format_name(file.format()) << " (" << file.tensors().size()
      << " tensors, " << file.file_bytes() << " bytes)\n";
  out << "tensors:\n";
  for (const CheckpointTensor& tensor : file.tensors()) {
    out << "  " << tensor.name << "  " << dtype_name(tensor.dtype) << "  "
        << dims_string(tensor.shape) << "\n";
  }
  // Validity: names and shapes against the layout inferred from the file.
  std::string verdict;
  try {
    const ModelLayout layout = infer_layout(path);
    const CheckpointTensor* first_k = file.find("ip_adapter.1.to_k_ip.weight");
    const int output_dim = static_cast<int>(first_k->shape.at(1));
    const auto expected = InstantIDModel::expected_shapes(layout, output_dim);
    std::vector<std::string> problems;
    for (const auto& [name, shape] : expected) {
      const CheckpointTensor* tensor = file.find(name);
      if (tensor == nullptr) {
        problems.push_back("missing " + name + " " + dims_string(shape));
      } else if (tensor->shape != shape) {
        problems.push_back(name + ": got " + dims_string(tensor->shape) + ", expected " +
                           dims_string(shape));
      }
    }
    for (const CheckpointTensor& tensor : file.tensors()) {
      if (expected.count(tensor.name) == 0) problems.push_back("unexpected " + tensor.name);
    }
    if (problems.empty()) {
      verdict = make_message("yes: ", describe_layout(layout), ", D_out ", output_dim);
    } else {
      verdict = make_message("no: ", problems.size(), " problem(s) against ",
                             describe_layout(layout), ":");
      for (std::size_t i = 0; i < problems.size() && i < 20; ++i) verdict += "\n  " + problems[i];
      if (problems.size() > 20) verdict += make_message("\n  ... and ", problems.size() - 20, " more");
    }
  } catch (const Error& e) {
    verdict = std::string("no: ") + e.what();
  }
  out << "instantid checkpoint: " << verdict << "\n";
}

std::string value_dims(const ::onnx::ValueInfoProto& value) {
  std::vector<std::string> dims;
  if (value.type().has_tensor_type() && value.type().tensor_type().has_shape()) {
    for (const auto& dim : value.type().tensor_type().shape().dim()) {
      dims.push_back(dim.has_dim_value() ? std::to_string(dim.dim_value())
                     : dim.dim_param().empty() ? std::string("?")
                                               : dim.dim_param());
    }
  }
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + dims[i];
  return text + "]";
}

std::int64_t dim_at(const ::onnx::ValueInfoProto& value, int index) {
  if (!value.type().has_tensor_type() || !value.type().tensor_type().has_shape()) return -1;
  const auto& shape = value.type().tensor_type().shape();
  if (index >= shape.dim_size() || !shape.dim(index).has_dim_value()) return -1;
  return shape.dim(index).dim_value();
}

bool inspect_onnx(const std::string& path, const std::string& bytes, std::ostream& out) {
  ::onnx::ModelProto model;
  if (!model.ParseFromString(bytes) || !model.has_graph() || model.graph().node_size() == 0) {
    return false;
  }
  const auto& graph = model.graph();
  std::map<std::string, bool> initializers;
  for (const auto& init : graph.initializer()) initializers[init.name()] = true;
  out << "format: onnx (ir version " << model.ir_version();
  for (const auto& opset : model.opset_import()) {
    out << ", opset " << (opset.domain().empty() ? "" : opset.domain() + ":") << opset.version();
  }
  if (!model.producer_name().empty()) out << ", producer " << model.producer_name();
  out << ", " << graph.node_size() << " nodes, " << graph.initializer_size() << " initializers)\n";
  std::vector<const ::onnx::ValueInfoProto*> inputs;
  out << "inputs:\n";
  for (const auto& input : graph.input()) {
    if (initializers.count(input.name()) != 0) continue;
    inputs.push_back(&input);
    out << "  " << input.name() << "  " << value_dims(input) << "\n";
  }
  out << "outputs:\n";
  for (const auto& output : graph.output()) {
    out << "  " << output.name() << "  " << value_dims(output) << "\n";
  }
  std::map<std::string, int> ops;
  for (const auto& node : graph.node()) ops[node.op_type()] += 1;
  out << "ops:";
  for (const auto& [op, count] : ops) out << " " << op << "×" << count;
  out << "\n";
  // The rules insightface's model_zoo uses to give a model its role.
  std::string role = "unknown (not a detector or recogniser by insightface's rules)";
  const int num_outputs = graph.output_size();
  const std::int64_t height = inputs.empty() ? -1 : dim_at(*inputs[0], 2);
  const std::int64_t width = inputs.empty() ? -1 : dim_at(*inputs[0], 3);
  if (num_outputs >= 5) {
    const bool keypoints = num_outputs == 9 || num_outputs == 15;
    role = make_message("detection (SCRFD/RetinaFace, ", num_outputs, " outputs, ",
                        keypoints ? "with" : "without", " keypoints)");
  } else if (height == 112 && width == 112 && num_outputs == 1) {
    const std::int64_t size = dim_at(graph.output(0), 1);
    role = make_message("recognition (ArcFace-style, 112x112 input, ",
                        size > 0 ? std::to_string(size) : std::string("?"), "-d embedding)");
  } else if (height == 192 && width == 192) {
    role = "landmark (192x192 input; not used by InstantID)";
  } else if (height == 96 && width == 96) {
    role = "gender/age (96x96 input; not used by InstantID)";
  }
  out << "insightface role: " << role << "\n";
  (void)path;
  return true;
}

int run_inspect(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  ArgParser parser("inspect", "FILE",
                   "Says what FILE is: a checkpoint's tensors (name, dtype, shape) and whether it "
                   "is a valid\nInstantID checkpoint; an ONNX model's inputs, outputs, op counts "
                   "and insightface role;\nor a stable-diffusion.cpp id_embeds.bin.");
  parser.positional("FILE", "file to inspect");
  if (!parser.parse(args, out)) return kExitOk;
  const std::string path = parser.get("FILE");
  const std::string bytes = read_all(path);
  out << "file: " << path << "\n";
  if (bytes.size() >= 4 && bytes.compare(0, 4, "PK\x03\x04") == 0) {
    inspect_checkpoint(path, out);
    return kExitOk;
  }
  if (looks_like_safetensors(bytes)) {
    inspect_checkpoint(path, out);
    return kExitOk;
  }
  if (looks_like_sdcpp_id_embeds(bytes)) {
    const HostTensor embeds = read_sdcpp_id_embeds_bytes(bytes, path);
    out << "format: stable-diffusion.cpp id_embeds.bin (ggml F32 tensor)\n"
        << "tensors:\n  id_embeds  f32  " << embeds.shape_str() << "\n";
    return kExitOk;
  }
  if (inspect_onnx(path, bytes, out)) return kExitOk;
  throw Error(make_message(path, ": format: got ", bytes.size(),
                           " bytes of an unknown format, expected safetensors, a torch.save zip, "
                           "ONNX or an id_embeds.bin"));
}

const Registrar kRegistrar(Command{"inspect", "describe a checkpoint, ONNX model or embeddings file",
                                   run_inspect});

}  // namespace
}  // namespace instantid::cli
