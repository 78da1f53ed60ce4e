// Writes small, complete seed files for every fuzz target into <dir>/<target>/: libFuzzer mutates
// from valid structure far faster than from nothing, and the fixtures of tests/data (copied by
// CMake) are few and sometimes large. Run by the fuzz_corpus target; deterministic output.

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <string>
#include <sys/stat.h>
#include <vector>

#include <onnx/onnx_pb.h>
#include <stb_image_write.h>

#include "hostile/formats.hpp"

namespace {

namespace fmt = instantid::test::formats;

std::string g_root;

void write_seed(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::string dir = g_root + "/" + target;
  ::mkdir(g_root.c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<float> ramp(std::size_t n, float scale = 0.1f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(static_cast<int>(i % 7) - 3);
  return v;
}

std::string halfs(std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) fmt::put_le(out, 0x3c00 + (i % 5) * 0x100, 2);  // 1, 2, 4..
  return out;
}

// ---- safetensors -------------------------------------------------------------------------------

void safetensors_seeds() {
  write_seed("safetensors", "two_f32.safetensors",
             fmt::safetensors({{"image_proj.latents", "F32", {1, 2, 3}, fmt::float_bytes(ramp(6))},
                               {"ip_adapter.1.to_k_ip.weight", "F32", {2, 2},
                                fmt::float_bytes(ramp(4))}},
                              "{\"format\":\"pt\"}"));
  write_seed("safetensors", "f16_bf16.safetensors",
             fmt::safetensors({{"a", "F16", {3}, halfs(3)}, {"b", "BF16", {2, 1}, halfs(2)}}));
  write_seed("safetensors", "scalar_and_empty.safetensors",
             fmt::safetensors({{"s", "F32", {}, fmt::float_bytes({1.5f})},
                               {"e", "F32", {0, 4}, ""}}));
  write_seed("safetensors", "empty.safetensors", fmt::safetensors({}));
}

// ---- torch.save zip ----------------------------------------------------------------------------

void torch_zip_seeds() {
  using fmt::TorchTensor;
  TorchTensor latents{"latents", "FloatStorage", {1, 2, 3}, fmt::float_bytes(ramp(6))};
  TorchTensor half{"proj_in.weight", "HalfStorage", {2, 2}, halfs(4)};
  TorchTensor bf16{"proj_in.bias", "BFloat16Storage", {2}, halfs(2)};
  TorchTensor k{"1.to_k_ip.weight", "FloatStorage", {2, 3}, fmt::float_bytes(ramp(6))};
  TorchTensor strided{"3.to_v_ip.weight", "FloatStorage", {2, 2}, fmt::float_bytes(ramp(8))};
  strided.stride = {1, 2};
  strided.storage_offset = 4;
  strided.claimed_numel = 8;
  write_seed("torch_zip", "ip_adapter_small.bin",
             fmt::torch_zip({{"image_proj", {latents, half, bf16}}, {"ip_adapter", {k, strided}}}));
  write_seed("torch_zip", "one_group.bin", fmt::torch_zip({{"image_proj", {latents}}}, "model"));
}

// ---- command-line inputs ------------------------------------------------------------------------

void cli_seeds() {
  // stable-diffusion.cpp id_embeds.bin: n_dims, name length, ggml type, ne[4], name, data.
  std::string bin;
  for (std::uint64_t v : {4u, 9u, 0u, 8u, 2u, 1u, 1u}) fmt::put_le(bin, v, 4);
  bin += "id_embeds";
  bin += fmt::float_bytes(ramp(16));
  write_seed("cli_inputs", "id_embeds.bin", bin);
  write_seed("cli_inputs", "embeds.safetensors",
             fmt::safetensors({{"embeds", "F32", {2, 1, 8}, fmt::float_bytes(ramp(16))}}));
  write_seed("cli_inputs", "embeds_torch.bin",
             fmt::torch_zip({{"tokens", {fmt::TorchTensor("cond", "FloatStorage", {1, 2, 4},
                                                          fmt::float_bytes(ramp(8)))}}}));
}

// ---- ONNX --------------------------------------------------------------------------------------

struct Model {
  ::onnx::ModelProto proto;
  ::onnx::GraphProto* graph;
  explicit Model(int opset) {
    proto.set_ir_version(7);
    proto.set_producer_name("instantid-fuzz-seeds");
    auto* op = proto.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    graph = proto.mutable_graph();
    graph->set_name("seed");
  }
  static void set_shape(::onnx::ValueInfoProto* v, const std::string& name,
                        std::initializer_list<std::int64_t> dims, const char* symbol = nullptr) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(::onnx::TensorProto::FLOAT);
    auto* shape = t->mutable_shape();
    bool first = true;
    for (auto d : dims) {
      auto* dim = shape->add_dim();
      if (first && symbol != nullptr) dim->set_dim_param(symbol);
      else dim->set_dim_value(d);
      first = false;
    }
  }
  Model& input(const std::string& name, std::initializer_list<std::int64_t> dims,
               const char* symbol = nullptr) {
    set_shape(graph->add_input(), name, dims, symbol);
    return *this;
  }
  Model& output(const std::string& name, std::initializer_list<std::int64_t> dims) {
    set_shape(graph->add_output(), name, dims);
    return *this;
  }
  Model& floats(const std::string& name, std::vector<std::int64_t> dims, bool raw = true) {
    auto* t = graph->add_initializer();
    t->set_name(name);
    t->set_data_type(::onnx::TensorProto::FLOAT);
    std::size_t n = 1;
    for (auto d : dims) {
      t->add_dims(d);
      n *= static_cast<std::size_t>(d);
    }
    const auto values = ramp(n, 0.05f);
    if (raw) t->set_raw_data(fmt::float_bytes(values));
    else for (float v : values) t->add_float_data(v);
    return *this;
  }
  Model& ints(const std::string& name, std::vector<std::int64_t> values) {
    auto* t = graph->add_initializer();
    t->set_name(name);
    t->set_data_type(::onnx::TensorProto::INT64);
    t->add_dims(static_cast<std::int64_t>(values.size()));
    for (auto v : values) t->add_int64_data(v);
    return *this;
  }
  ::onnx::NodeProto* node(const std::string& op, std::initializer_list<const char*> inputs,
                          std::initializer_list<const char*> outputs) {
    auto* n = graph->add_node();
    n->set_op_type(op);
    n->set_name(op + "_" + std::to_string(graph->node_size()));
    for (auto* i : inputs) n->add_input(i);
    for (auto* o : outputs) n->add_output(o);
    return n;
  }
  static void attr(::onnx::NodeProto* n, const std::string& name,
                   std::initializer_list<std::int64_t> values) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INTS);
    for (auto v : values) a->add_ints(v);
  }
  static void attr(::onnx::NodeProto* n, const std::string& name, std::int64_t value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INT);
    a->set_i(value);
  }
  static void attr_f(::onnx::NodeProto* n, const std::string& name, float value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::FLOAT);
    a->set_f(value);
  }
  static void attr_s(::onnx::NodeProto* n, const std::string& name, const std::string& value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::STRING);
    a->set_s(value);
  }
  void save(const std::string& name) {
    std::string bytes;
    proto.SerializeToString(&bytes);
    write_seed("onnx", name, bytes);
  }
};

void onnx_seeds() {
  {  // SCRFD-like stem and head: Conv → BatchNorm → Relu → Conv → Sigmoid, head flattened.
    Model m(11);
    m.input("input.1", {1, 3, 8, 8}, "batch").output("score", {32, 1});
    m.floats("w1", {4, 3, 3, 3}).floats("b1", {4}).floats("g", {4}).floats("beta", {4})
        .floats("mean", {4}).floats("var", {4}).floats("w2", {2, 4, 1, 1}, false).floats("b2", {2});
    auto* c1 = m.node("Conv", {"input.1", "w1", "b1"}, {"c1"});
    Model::attr(c1, "kernel_shape", {3, 3});
    Model::attr(c1, "pads", {1, 1, 1, 1});
    Model::attr(c1, "strides", {2, 2});
    auto* bn = m.node("BatchNormalization", {"c1", "g", "beta", "mean", "var"}, {"bn"});
    Model::attr_f(bn, "epsilon", 1e-5f);
    m.node("Relu", {"bn"}, {"r"});
    auto* c2 = m.node("Conv", {"r", "w2", "b2"}, {"c2"});
    Model::attr(c2, "kernel_shape", {1, 1});
    m.node("Sigmoid", {"c2"}, {"s"});
    auto* tr = m.node("Transpose", {"s"}, {"t"});
    Model::attr(tr, "perm", {2, 3, 0, 1});
    m.ints("shape", {-1, 1});
    m.node("Reshape", {"t", "shape"}, {"score"});
    m.save("scrfd_head.onnx");
  }
  {  // ArcFace-like tail: PRelu, pools, Flatten, Gemm, BatchNorm.
    Model m(11);
    m.input("data", {1, 2, 4, 4}).output("fc1", {1, 3});
    m.floats("slope", {2, 1, 1}).floats("fc_w", {3, 2}).floats("fc_b", {3});
    m.node("PRelu", {"data", "slope"}, {"p"});
    auto* mp = m.node("MaxPool", {"p"}, {"mp"});
    Model::attr(mp, "kernel_shape", {2, 2});
    Model::attr(mp, "strides", {2, 2});
    auto* ap = m.node("AveragePool", {"mp"}, {"ap"});
    Model::attr(ap, "kernel_shape", {1, 1});
    m.node("GlobalAveragePool", {"ap"}, {"gap"});
    auto* fl = m.node("Flatten", {"gap"}, {"fl"});
    Model::attr(fl, "axis", 1);
    auto* gemm = m.node("Gemm", {"fl", "fc_w", "fc_b"}, {"fc1"});
    Model::attr(gemm, "transB", 1);
    Model::attr_f(gemm, "alpha", 1.0f);
    m.save("arcface_tail.onnx");
  }
  {  // Elementwise and MatMul with broadcasting; Clip with attributes (opset 11 takes inputs).
    Model m(11);
    m.input("x", {2, 3}).output("y", {2, 3});
    m.floats("w", {3, 3}).floats("b", {3}).floats("lo", {}).floats("hi", {});
    m.node("MatMul", {"x", "w"}, {"mm"});
    m.node("Add", {"mm", "b"}, {"a"});
    m.node("Mul", {"a", "x"}, {"mu"});
    m.node("Sub", {"mu", "b"}, {"su"});
    m.node("Div", {"su", "b"}, {"dv"});
    m.node("Clip", {"dv", "lo", "hi"}, {"cl"});
    m.node("Identity", {"cl"}, {"id"});
    m.node("Dropout", {"id"}, {"y"});
    m.save("elementwise.onnx");
  }
  {  // Shape arithmetic: Shape → Gather → Unsqueeze → Concat → Reshape; Slice, Squeeze.
    Model m(11);
    m.input("x", {1, 4, 2, 2}).output("y", {4, 4});
    m.ints("idx", {0}).ints("minus1", {-1}).ints("starts", {0}).ints("ends", {2})
        .ints("axes", {1});
    m.node("Shape", {"x"}, {"sh"});
    auto* g = m.node("Gather", {"sh", "idx"}, {"n"});
    Model::attr(g, "axis", 0);
    Model::attr(m.node("Concat", {"minus1", "n"}, {"newshape"}), "axis", 0);
    m.node("Reshape", {"x", "newshape"}, {"r"});
    m.node("Slice", {"x", "starts", "ends", "axes"}, {"sl"});
    auto* sq = m.node("Squeeze", {"r"}, {"sq"});
    Model::attr(sq, "axes", {1});
    auto* un = m.node("Unsqueeze", {"sq"}, {"un"});
    Model::attr(un, "axes", {0});
    auto* fl = m.node("Flatten", {"un"}, {"y"});
    Model::attr(fl, "axis", 1);
    m.save("shape_ops.onnx");
  }
  {  // Resize (opset 11: X, roi, scales) and Upsample (opset 9: X, scales).
    Model m(11);
    m.input("x", {1, 1, 2, 3}).output("y", {1, 1, 4, 6});
    m.floats("roi", {0});
    auto* t = m.graph->add_initializer();
    t->set_name("scales");
    t->set_data_type(::onnx::TensorProto::FLOAT);
    t->add_dims(4);
    for (float s : {1.0f, 1.0f, 2.0f, 2.0f}) t->add_float_data(s);
    auto* r = m.node("Resize", {"x", "roi", "scales"}, {"y"});
    Model::attr_s(r, "mode", "nearest");
    Model::attr_s(r, "coordinate_transformation_mode", "asymmetric");
    Model::attr_s(r, "nearest_mode", "floor");
    m.save("resize.onnx");
  }
  {
    Model m(9);
    m.input("x", {1, 1, 2, 2}).output("y", {1, 1, 4, 4});
    auto* t = m.graph->add_initializer();
    t->set_name("scales");
    t->set_data_type(::onnx::TensorProto::FLOAT);
    t->add_dims(4);
    for (float s : {1.0f, 1.0f, 2.0f, 2.0f}) t->add_float_data(s);
    auto* u = m.node("Upsample", {"x", "scales"}, {"y"});
    Model::attr_s(u, "mode", "nearest");
    m.save("upsample.onnx");
  }
  {  // Constant node and opset-13 Unsqueeze/Squeeze with axes as inputs.
    Model m(13);
    m.input("x", {3}).output("y", {1, 3});
    auto* c = m.node("Constant", {}, {"axes"});
    auto* a = c->add_attribute();
    a->set_name("value");
    a->set_type(::onnx::AttributeProto::TENSOR);
    auto* t = a->mutable_t();
    t->set_data_type(::onnx::TensorProto::INT64);
    t->add_dims(1);
    t->add_int64_data(0);
    m.node("Unsqueeze", {"x", "axes"}, {"y"});
    m.save("opset13_unsqueeze.onnx");
  }
}

// ---- images ------------------------------------------------------------------------------------

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                             static_cast<std::size_t>(size));
}

std::vector<unsigned char> pixels(int w, int h, int c) {
  std::vector<unsigned char> p(static_cast<std::size_t>(w * h * c));
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<unsigned char>((i * 37) & 0xff);
  return p;
}

void image_seeds() {
  for (int c : {1, 3, 4}) {
    std::string png;
    const auto p = pixels(7, 5, c);
    stbi_write_png_to_func(append_bytes, &png, 7, 5, c, p.data(), 7 * c);
    write_seed("image", "rgb" + std::to_string(c) + ".png", png);
  }
  std::string jpeg;
  const auto p = pixels(9, 6, 3);
  stbi_write_jpg_to_func(append_bytes, &jpeg, 9, 6, 3, p.data(), 60);
  write_seed("image", "plain.jpg", jpeg);
  for (int orientation = 1; orientation <= 8; ++orientation) {
    const bool big_endian = orientation % 2 == 0;
    write_seed("image", "exif_" + std::to_string(orientation) + ".jpg",
               fmt::jpeg_with_segment(jpeg, fmt::exif_orientation_segment(orientation, big_endian)));
  }
  std::string bmp;
  stbi_write_bmp_to_func(append_bytes, &bmp, 4, 3, 3, pixels(4, 3, 3).data());
  write_seed("image", "small.bmp", bmp);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <seed directory>\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  safetensors_seeds();
  torch_zip_seeds();
  cli_seeds();
  onnx_seeds();
  image_seeds();
  return 0;
}
