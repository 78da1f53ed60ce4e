#pragma once
// Builds tiny ONNX models in C++ with ONNX's protobuf API, for op-by-op tests.

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

#include "instantid/onnx/executor.hpp"

namespace instantid::test {

class GraphBuilder {
 public:
  explicit GraphBuilder(std::int64_t opset = 11) {
    model_.set_ir_version(7);
    model_.set_producer_name("instantid-tests");
    auto* os = model_.add_opset_import();
    os->set_domain("");
    os->set_version(opset);
    graph_ = model_.mutable_graph();
    graph_->set_name("test");
  }

  // dims: -1 becomes a symbolic dim "?".
  GraphBuilder& input(const std::string& name, const std::vector<std::int64_t>& dims) {
    auto* v = graph_->add_input();
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(::onnx::TensorProto::FLOAT);
    auto* shape = tt->mutable_shape();
    for (auto d : dims) {
      auto* dim = shape->add_dim();
      if (d < 0) {
        dim->set_dim_param("?");
      } else {
        dim->set_dim_value(d);
      }
    }
    return *this;
  }

  GraphBuilder& output(const std::string& name) {
    auto* v = graph_->add_output();
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(::onnx::TensorProto::FLOAT);
    return *this;
  }

  GraphBuilder& init_floats(const std::string& name, const std::vector<std::int64_t>& dims,
                            const std::vector<float>& values, bool raw = false) {
    auto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(::onnx::TensorProto::FLOAT);
    for (auto d : dims) t->add_dims(d);
    if (raw) {
      t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
    } else {
      for (float v : values) t->add_float_data(v);
    }
    return *this;
  }

  GraphBuilder& init_ints(const std::string& name, const std::vector<std::int64_t>& dims,
                          const std::vector<std::int64_t>& values, bool raw = false) {
    auto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(::onnx::TensorProto::INT64);
    for (auto d : dims) t->add_dims(d);
    if (raw) {
      t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 8));
    } else {
      for (auto v : values) t->add_int64_data(v);
    }
    return *this;
  }

  ::onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs, const std::string& name = "") {
    auto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(name.empty() ? op + "_" + std::to_string(graph_->node_size()) : name);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return n;
  }

  static void attr(::onnx::NodeProto* n, const std::string& name, std::int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(::onnx::NodeProto* n, const std::string& name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void attr(::onnx::NodeProto* n, const std::string& name, const std::string& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::STRING);
    a->set_s(v);
  }
  static void attr(::onnx::NodeProto* n, const std::string& name,
                   const std::vector<std::int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }
  static void attr(::onnx::NodeProto* n, const std::string& name, const std::vector<float>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::FLOATS);
    for (auto x : v) a->add_floats(x);
  }

  ::onnx::ModelProto& model() { return model_; }
  ::onnx::GraphProto& graph() { return *graph_; }

  std::string bytes() const { return model_.SerializeAsString(); }
  onnx::Executor build(const onnx::ExecutorOptions& options = {}) const {
    return onnx::Executor::from_bytes(bytes(), "test.onnx", options);
  }

 private:
  ::onnx::ModelProto model_;
  ::onnx::GraphProto* graph_ = nullptr;
};

}  // namespace instantid::test
