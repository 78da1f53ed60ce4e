// Reads an onnx::ModelProto (ONNX's own protobuf schema, Debian's libonnx) into a checked Graph.
// Everything that can be checked without input data is checked here, so that an unsupported model
// fails at load time with a message naming the node, the op and the attribute.

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <unordered_map>

#include "instantid/error.hpp"
#include "onnx/graph.hpp"

namespace instantid::onnx {

namespace {
thread_local std::int64_t t_element_limit = kMaxTensorElements;
}  // namespace

TensorElementLimit::TensorElementLimit(std::int64_t limit) : previous_(t_element_limit) {
  t_element_limit = limit;
}
TensorElementLimit::~TensorElementLimit() { t_element_limit = previous_; }
std::int64_t TensorElementLimit::current() { return t_element_limit; }

std::int64_t checked_numel(const std::vector<std::int64_t>& shape) {
  const std::int64_t limit = t_element_limit;
  std::int64_t n = 1;
  for (auto d : shape) {
    INSTANTID_CHECK(d >= 0, "tensor shape ", shape_string(shape),
                    ": got a negative dimension, expected sizes >= 0");
    INSTANTID_CHECK(d == 0 || n <= limit / d, "tensor shape ", shape_string(shape),
                    ": more elements than the limit of ", limit,
                    " (ExecutorOptions::max_tensor_elements)");
    n *= d;
  }
  return n;
}

Tensor Tensor::floats(std::vector<std::int64_t> shape, std::vector<float> values) {
  Tensor t;
  t.type = ElemType::kFloat;
  const auto n = static_cast<std::size_t>(checked_numel(shape));  // before allocating
  t.shape = std::move(shape);
  t.f = std::move(values);
  if (t.f.empty()) t.f.resize(n);
  return t;
}

Tensor Tensor::ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> values) {
  Tensor t;
  t.type = ElemType::kInt64;
  const auto n = static_cast<std::size_t>(checked_numel(shape));
  t.shape = std::move(shape);
  t.i = std::move(values);
  if (t.i.empty()) t.i.resize(n);
  return t;
}

std::string Node::where() const {
  return make_message("node '", name, "' (", op_type, ")");
}

std::int64_t Node::attr_int(const std::string& key, std::int64_t fallback) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second.i;
}

float Node::attr_float(const std::string& key, float fallback) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second.f;
}

std::string Node::attr_string(const std::string& key, const std::string& fallback) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second.s;
}

std::vector<std::int64_t> Node::attr_ints(const std::string& key,
                                          std::vector<std::int64_t> fallback) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second.ints;
}

namespace {

struct OpSpec {
  Op op;
  int min_inputs;
  int max_inputs;
  int max_outputs;
  std::set<std::string> attrs;
};

const std::unordered_map<std::string, OpSpec>& op_table() {
  static const std::unordered_map<std::string, OpSpec> table = {
      {"Conv", {Op::kConv, 2, 3, 1, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}}},
      {"BatchNormalization",
       {Op::kBatchNorm, 5, 5, 1, {"epsilon", "momentum", "spatial", "training_mode", "is_test"}}},
      {"PRelu", {Op::kPRelu, 2, 2, 1, {}}},
      {"Relu", {Op::kRelu, 1, 1, 1, {}}},
      {"Clip", {Op::kClip, 1, 3, 1, {"min", "max"}}},
      {"Add", {Op::kAdd, 2, 2, 1, {}}},
      {"Sub", {Op::kSub, 2, 2, 1, {}}},
      {"Mul", {Op::kMul, 2, 2, 1, {}}},
      {"Div", {Op::kDiv, 2, 2, 1, {}}},
      {"Sigmoid", {Op::kSigmoid, 1, 1, 1, {}}},
      {"MaxPool",
       {Op::kMaxPool, 1, 1, 1,
        {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"}}},
      {"AveragePool",
       {Op::kAveragePool, 1, 1, 1,
        {"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"}}},
      {"GlobalAveragePool", {Op::kGlobalAveragePool, 1, 1, 1, {}}},
      {"Resize",
       {Op::kResize, 1, 4, 1,
        {"mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
         "exclude_outside", "extrapolation_value"}}},
      {"Upsample", {Op::kUpsample, 1, 2, 1, {"mode", "scales"}}},
      {"Shape", {Op::kShape, 1, 1, 1, {"start", "end"}}},
      {"Gather", {Op::kGather, 2, 2, 1, {"axis"}}},
      {"Unsqueeze", {Op::kUnsqueeze, 1, 2, 1, {"axes"}}},
      {"Squeeze", {Op::kSqueeze, 1, 2, 1, {"axes"}}},
      {"Slice", {Op::kSlice, 1, 5, 1, {"starts", "ends", "axes"}}},
      {"Concat", {Op::kConcat, 1, 1 << 16, 1, {"axis"}}},
      {"Reshape", {Op::kReshape, 2, 2, 1, {"allowzero"}}},
      {"Transpose", {Op::kTranspose, 1, 1, 1, {"perm"}}},
      {"Flatten", {Op::kFlatten, 1, 1, 1, {"axis"}}},
      {"Gemm", {Op::kGemm, 2, 3, 1, {"alpha", "beta", "transA", "transB"}}},
      {"MatMul", {Op::kMatMul, 2, 2, 1, {}}},
      {"Constant",
       {Op::kConstant, 0, 0, 1, {"value", "value_float", "value_floats", "value_int", "value_ints"}}},
      {"Identity", {Op::kIdentity, 1, 1, 1, {}}},
      {"Dropout", {Op::kDropout, 1, 3, 1, {"ratio", "seed", "is_test"}}},
  };
  return table;
}

std::string supported_ops() {
  std::vector<std::string> names;
  for (const auto& kv : op_table()) names.push_back(kv.first);
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::int64_t checked_count(const std::vector<std::int64_t>& dims, const std::string& what) {
  INSTANTID_CHECK(dims.size() <= static_cast<std::size_t>(kMaxRank), what, ": rank ", dims.size(),
                  " exceeds the limit of ", kMaxRank);
  std::int64_t n = 1;
  for (auto d : dims) {
    INSTANTID_CHECK(d >= 0, what, ": got negative dimension in ", shape_string(dims),
                    ", expected sizes >= 0");
    INSTANTID_CHECK(d == 0 || n <= kMaxTensorElements / d, what, ": shape ", shape_string(dims),
                    " exceeds the limit of ", kMaxTensorElements, " elements");
    n *= d;
  }
  return n;
}

Tensor read_tensor(const ::onnx::TensorProto& proto, const std::string& what) {
  std::vector<std::int64_t> dims(proto.dims().begin(), proto.dims().end());
  const std::int64_t n = checked_count(dims, what);
  const auto count = static_cast<std::size_t>(n);
  INSTANTID_CHECK(proto.data_location() != ::onnx::TensorProto::EXTERNAL &&
                      proto.external_data_size() == 0,
                  what, ": tensor data is stored in an external file, which is not supported; "
                  "expected the weights inside the .onnx file (re-save with "
                  "onnx.save(model, path, save_as_external_data=False))");
  const bool raw = proto.has_raw_data();
  const std::string& bytes = proto.raw_data();
  auto check_size = [&](std::size_t got, std::size_t elem) {
    if (raw) {
      INSTANTID_CHECK(bytes.size() == count * elem, what, ": raw_data holds ", bytes.size(),
                      " bytes, expected ", count * elem, " for shape ", shape_string(dims));
    } else {
      INSTANTID_CHECK(got == count, what, ": holds ", got, " values, expected ", count,
                      " for shape ", shape_string(dims));
    }
  };
  switch (proto.data_type()) {
    case ::onnx::TensorProto::FLOAT: {
      check_size(static_cast<std::size_t>(proto.float_data_size()), 4);  // before allocating
      Tensor t = Tensor::floats(dims);
      if (raw) {
        if (count) std::memcpy(t.f.data(), bytes.data(), count * 4);
      } else {
        std::copy(proto.float_data().begin(), proto.float_data().end(), t.f.begin());
      }
      return t;
    }
    case ::onnx::TensorProto::DOUBLE: {
      check_size(static_cast<std::size_t>(proto.double_data_size()), 8);
      Tensor t = Tensor::floats(dims);
      for (std::size_t k = 0; k < count; ++k) {
        double v = 0;
        if (raw) {
          std::memcpy(&v, bytes.data() + k * 8, 8);
        } else {
          v = proto.double_data(static_cast<int>(k));
        }
        t.f[k] = static_cast<float>(v);
      }
      return t;
    }
    case ::onnx::TensorProto::INT64: {
      check_size(static_cast<std::size_t>(proto.int64_data_size()), 8);
      Tensor t = Tensor::ints(dims);
      if (raw) {
        if (count) std::memcpy(t.i.data(), bytes.data(), count * 8);
      } else {
        std::copy(proto.int64_data().begin(), proto.int64_data().end(), t.i.begin());
      }
      return t;
    }
    case ::onnx::TensorProto::INT32: {
      check_size(static_cast<std::size_t>(proto.int32_data_size()), 4);
      Tensor t = Tensor::ints(dims);
      for (std::size_t k = 0; k < count; ++k) {
        std::int32_t v = 0;
        if (raw) {
          std::memcpy(&v, bytes.data() + k * 4, 4);
        } else {
          v = proto.int32_data(static_cast<int>(k));
        }
        t.i[k] = v;
      }
      return t;
    }
    default:
      throw Error(make_message(what, ": tensor element type ",
                               ::onnx::TensorProto::DataType_Name(
                                   static_cast<::onnx::TensorProto::DataType>(proto.data_type())),
                               " is not supported, expected FLOAT, DOUBLE, INT64 or INT32"));
  }
}

Attribute read_attribute(const ::onnx::AttributeProto& a, const std::string& what) {
  Attribute out;
  using AP = ::onnx::AttributeProto;
  switch (a.type()) {
    case AP::INT: out.kind = Attribute::Kind::kInt; out.i = a.i(); break;
    case AP::FLOAT: out.kind = Attribute::Kind::kFloat; out.f = a.f(); break;
    case AP::STRING: out.kind = Attribute::Kind::kString; out.s = a.s(); break;
    case AP::INTS:
      out.kind = Attribute::Kind::kInts;
      out.ints.assign(a.ints().begin(), a.ints().end());
      break;
    case AP::FLOATS:
      out.kind = Attribute::Kind::kFloats;
      out.floats.assign(a.floats().begin(), a.floats().end());
      break;
    case AP::TENSOR:
      out.kind = Attribute::Kind::kTensor;
      out.t = read_tensor(a.t(), what);
      break;
    default:
      throw Error(make_message(what, ": attribute type ", AP::AttributeType_Name(a.type()),
                               " is not supported"));
  }
  return out;
}

void expect_kind(const Node& node, const char* key, Attribute::Kind kind, const char* kind_name) {
  auto it = node.attrs.find(key);
  if (it == node.attrs.end()) return;
  INSTANTID_CHECK(it->second.kind == kind, node.where(), ": attribute '", key,
                  "' has the wrong type, expected ", kind_name);
}

[[noreturn]] void unsupported_value(const Node& node, const char* key, const std::string& got,
                                    const std::string& expected) {
  throw Error(make_message(node.where(), ": unsupported attribute value ", key, "=", got,
                           ", expected ", expected));
}

void check_spatial(const Node& node, bool allow_dilations) {
  expect_kind(node, "kernel_shape", Attribute::Kind::kInts, "ints");
  expect_kind(node, "strides", Attribute::Kind::kInts, "ints");
  expect_kind(node, "pads", Attribute::Kind::kInts, "ints");
  expect_kind(node, "dilations", Attribute::Kind::kInts, "ints");
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "VALID") {
    unsupported_value(node, "auto_pad", auto_pad, "NOTSET or VALID");
  }
  if (node.op != Op::kConv) {
    INSTANTID_CHECK(node.has("kernel_shape"), node.where(), ": missing attribute 'kernel_shape'");
  }
  auto check_len = [&](const char* key, std::size_t len) {
    if (!node.has(key)) return;
    const auto v = node.attr_ints(key);
    INSTANTID_CHECK(v.size() == len, node.where(), ": attribute '", key, "' has ", v.size(),
                    " values, expected ", len, " (only 2-D spatial ops are supported)");
    for (auto x : v) {
      INSTANTID_CHECK(x >= 0, node.where(), ": attribute '", key, "' has negative value ", x);
    }
  };
  check_len("kernel_shape", 2);
  check_len("strides", 2);
  check_len("dilations", 2);
  check_len("pads", 4);
  for (auto s : node.attr_ints("strides", {1, 1})) {
    INSTANTID_CHECK(s >= 1, node.where(), ": strides must be >= 1, got ", s);
  }
  for (auto d : node.attr_ints("dilations", {1, 1})) {
    INSTANTID_CHECK(d >= 1, node.where(), ": dilations must be >= 1, got ", d);
    if (!allow_dilations && d != 1) {
      unsupported_value(node, "dilations", std::to_string(d), "1");
    }
  }
}

void check_node(const Node& node, std::int64_t opset) {
  switch (node.op) {
    case Op::kConv:
      check_spatial(node, true);
      expect_kind(node, "group", Attribute::Kind::kInt, "int");
      INSTANTID_CHECK(node.attr_int("group", 1) >= 1, node.where(), ": group must be >= 1, got ",
                      node.attr_int("group", 1));
      break;
    case Op::kMaxPool:
      check_spatial(node, true);
      if (node.attr_int("storage_order", 0) != 0) {
        unsupported_value(node, "storage_order", std::to_string(node.attr_int("storage_order", 0)),
                          "0");
      }
      break;
    case Op::kAveragePool:
      check_spatial(node, false);
      break;
    case Op::kBatchNorm:
      if (node.attr_int("training_mode", 0) != 0) {
        unsupported_value(node, "training_mode", std::to_string(node.attr_int("training_mode", 0)),
                          "0 (inference)");
      }
      if (node.attr_int("spatial", 1) != 1) {
        unsupported_value(node, "spatial", std::to_string(node.attr_int("spatial", 1)), "1");
      }
      break;
    case Op::kResize: {
      const std::string mode = node.attr_string("mode", "nearest");
      if (mode != "nearest") unsupported_value(node, "mode", mode, "nearest");
      const std::string ctm =
          node.attr_string("coordinate_transformation_mode", opset >= 11 ? "half_pixel" : "asymmetric");
      if (ctm != "asymmetric") {
        unsupported_value(node, "coordinate_transformation_mode", ctm, "asymmetric");
      }
      const std::string nearest = node.attr_string("nearest_mode", "round_prefer_floor");
      if (opset >= 11 && nearest != "floor") unsupported_value(node, "nearest_mode", nearest, "floor");
      if (node.attr_int("exclude_outside", 0) != 0) {
        unsupported_value(node, "exclude_outside", "1", "0");
      }
      break;
    }
    case Op::kUpsample: {
      const std::string mode = node.attr_string("mode", "nearest");
      if (mode != "nearest") unsupported_value(node, "mode", mode, "nearest");
      break;
    }
    case Op::kReshape:
      if (node.attr_int("allowzero", 0) != 0) unsupported_value(node, "allowzero", "1", "0");
      break;
    case Op::kConstant:
      INSTANTID_CHECK(node.attrs.size() == 1, node.where(),
                      ": expected exactly one of value, value_float, value_floats, value_int, "
                      "value_ints");
      break;
    case Op::kDropout:
      INSTANTID_CHECK(node.outputs.size() < 2 || node.outputs[1] < 0, node.where(),
                      ": the mask output is not supported (inference only)");
      INSTANTID_CHECK(node.inputs.size() < 3 || node.inputs[2] < 0, node.where(),
                      ": the training_mode input is not supported (inference only)");
      break;
    default:
      break;
  }
}

}  // namespace

Graph parse_model(const std::string& bytes, const std::string& name) {
  INSTANTID_CHECK(static_cast<std::int64_t>(bytes.size()) < kMaxModelBytes, name, ": file of ",
                  bytes.size(), " bytes exceeds the 2 GiB limit of an .onnx protobuf");
  INSTANTID_CHECK(!bytes.empty(), name, ": empty file, expected an ONNX ModelProto");
  ::onnx::ModelProto model;
  INSTANTID_CHECK(model.ParseFromString(bytes), name,
                  ": not a valid ONNX model (malformed or truncated protobuf; ", bytes.size(),
                  " bytes read)");
  INSTANTID_CHECK(model.has_graph(), name, ": the model has no graph (truncated or not an .onnx file)");
  const ::onnx::GraphProto& g = model.graph();

  Graph graph;
  graph.path = name;
  for (const auto& os : model.opset_import()) {
    if (os.domain().empty() || os.domain() == "ai.onnx") graph.opset = os.version();
  }
  INSTANTID_CHECK(graph.opset > 0, name, ": no opset import for the default ONNX domain");
  INSTANTID_CHECK(graph.opset >= 7 && graph.opset <= 21, name, ": opset ", graph.opset,
                  " is not supported, expected 7..21");
  INSTANTID_CHECK(static_cast<std::size_t>(g.node_size()) <= kMaxNodes, name, ": ", g.node_size(),
                  " nodes exceed the limit of ", kMaxNodes);

  std::unordered_map<std::string, int> ids;
  auto new_value = [&](const std::string& value_name, const std::string& what) {
    INSTANTID_CHECK(!value_name.empty(), name, ": ", what, " has an empty name");
    INSTANTID_CHECK(ids.count(value_name) == 0, name, ": value '", value_name,
                    "' is defined twice (", what, ")");
    const int id = static_cast<int>(graph.value_names.size());
    ids[value_name] = id;
    graph.value_names.push_back(value_name);
    return id;
  };

  for (const auto& init : g.initializer()) {
    const int id = new_value(init.name(), "initializer");
    graph.initializers[id] = read_tensor(init, make_message(name, ": initializer '", init.name(), "'"));
  }
  for (const auto& in : g.input()) {
    if (ids.count(in.name()) && graph.initializers.count(ids[in.name()])) continue;
    const int id = new_value(in.name(), "graph input");
    const auto& type = in.type();
    INSTANTID_CHECK(type.has_tensor_type(), name, ": graph input '", in.name(),
                    "' is not a tensor");
    INSTANTID_CHECK(type.tensor_type().elem_type() == ::onnx::TensorProto::FLOAT, name,
                    ": graph input '", in.name(), "' has element type ",
                    ::onnx::TensorProto::DataType_Name(
                        static_cast<::onnx::TensorProto::DataType>(type.tensor_type().elem_type())),
                    ", expected FLOAT");
    ValueInfo info;
    info.name = in.name();
    for (const auto& d : type.tensor_type().shape().dim()) {
      info.dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
      info.dim_params.push_back(d.has_dim_value() ? std::string() : d.dim_param());
    }
    graph.input_ids.push_back(id);
    graph.inputs.push_back(std::move(info));
  }

  const auto& table = op_table();
  for (int n = 0; n < g.node_size(); ++n) {
    const auto& np = g.node(n);
    Node node;
    node.name = np.name().empty() ? make_message("#", n) : np.name();
    node.op_type = np.op_type();
    INSTANTID_CHECK(np.domain().empty() || np.domain() == "ai.onnx", name, ": node '", node.name,
                    "' (", np.op_type(), "): operator domain '", np.domain(),
                    "' is not supported, expected the default ONNX domain");
    auto spec_it = table.find(np.op_type());
    INSTANTID_CHECK(spec_it != table.end(), name, ": node '", node.name, "': unsupported op '",
                    np.op_type(), "'; supported ops: ", supported_ops());
    const OpSpec& spec = spec_it->second;
    node.op = spec.op;
    INSTANTID_CHECK(np.input_size() >= spec.min_inputs && np.input_size() <= spec.max_inputs, name,
                    ": ", node.where(), ": got ", np.input_size(), " inputs, expected ",
                    spec.min_inputs, "..", spec.max_inputs);
    for (const auto& a : np.attribute()) {
      INSTANTID_CHECK(spec.attrs.count(a.name()) != 0, name, ": ", node.where(),
                      ": unsupported attribute '", a.name(), "'");
      node.attrs[a.name()] = read_attribute(
          a, make_message(name, ": ", node.where(), ": attribute '", a.name(), "'"));
    }
    for (const auto& in : np.input()) {
      if (in.empty()) {
        node.inputs.push_back(-1);
        continue;
      }
      auto it = ids.find(in);
      INSTANTID_CHECK(it != ids.end(), name, ": ", node.where(), ": input '", in,
                      "' is not produced by an earlier node, an initializer or a graph input "
                      "(graph not in topological order?)");
      node.inputs.push_back(it->second);
    }
    INSTANTID_CHECK(np.output_size() >= 1, name, ": ", node.where(), ": has no outputs");
    INSTANTID_CHECK(!np.output(0).empty(), name, ": ", node.where(), ": first output has no name");
    for (int k = 0; k < np.output_size(); ++k) {
      if (np.output(k).empty()) {
        node.outputs.push_back(-1);
        continue;
      }
      INSTANTID_CHECK(k < spec.max_outputs, name, ": ", node.where(), ": output ", k, " ('",
                      np.output(k), "') is not supported, expected at most ", spec.max_outputs,
                      " output(s)");
      node.outputs.push_back(new_value(np.output(k), make_message("output of ", node.where())));
    }
    try {
      check_node(node, graph.opset);
    } catch (const Error& e) {
      throw Error(make_message(name, ": ", e.what()));
    }
    graph.nodes.push_back(std::move(node));
  }

  for (const auto& out : g.output()) {
    auto it = ids.find(out.name());
    INSTANTID_CHECK(it != ids.end(), name, ": graph output '", out.name(),
                    "' is not produced by any node");
    graph.output_ids.push_back(it->second);
    ValueInfo info;
    info.name = out.name();
    if (out.type().has_tensor_type()) {
      for (const auto& d : out.type().tensor_type().shape().dim()) {
        info.dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
        info.dim_params.push_back(d.has_dim_value() ? std::string() : d.dim_param());
      }
    }
    graph.outputs.push_back(std::move(info));
  }
  INSTANTID_CHECK(!graph.output_ids.empty(), name, ": the graph has no outputs");

  graph.last_use.assign(graph.value_names.size(), -1);
  for (std::size_t n = 0; n < graph.nodes.size(); ++n) {
    for (int v : graph.nodes[n].inputs) {
      if (v >= 0) graph.last_use[static_cast<std::size_t>(v)] = static_cast<int>(n);
    }
  }
  for (int v : graph.output_ids) {
    graph.last_use[static_cast<std::size_t>(v)] = static_cast<int>(graph.nodes.size());
  }
  return graph;
}

}  // namespace instantid::onnx
