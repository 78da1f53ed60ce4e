// ONNX models that lie: initializers claiming billions of elements with a few bytes of data,
// Resize nodes asking for outputs of 10^10 elements, garbage bytes, NaN inputs. The executor must
// refuse each with an Error, before allocating what the model claims.

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>

#include "alloc_probe.hpp"
#include "formats.hpp"
#include "instantid/error.hpp"
#include "instantid/onnx/executor.hpp"
#include "support/refusal.hpp"

namespace fmt = instantid::test::formats;
using Catch::Matchers::Contains;
using instantid::HostTensor;
using instantid::onnx::Executor;
using instantid::test::AllocProbe;

using instantid::test::refusal;

namespace {

constexpr std::size_t kSmallAllocation = 1 << 20;
// A run may allocate its own scratch (the CPU backend's conv buffers); far below what is claimed.
constexpr std::size_t kSmallRunAllocation = 16 << 20;

void set_shape(::onnx::ValueInfoProto* v, const std::string& name,
               const std::vector<std::int64_t>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(::onnx::TensorProto::FLOAT);
  for (auto d : dims) t->mutable_shape()->add_dim()->set_dim_value(d);
}

::onnx::ModelProto model(int opset) {
  ::onnx::ModelProto m;
  m.set_ir_version(7);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  m.mutable_graph()->set_name("hostile");
  return m;
}

std::string bytes_of(const ::onnx::ModelProto& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

// x [1, 1, 2, 2] → Add(x, w) → y, with w's dims and data chosen by the test.
std::string add_model(const std::vector<std::int64_t>& w_dims, const std::string& w_raw) {
  auto m = model(11);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", {1, 1, 2, 2});
  set_shape(g->add_output(), "y", {1, 1, 2, 2});
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(::onnx::TensorProto::FLOAT);
  for (auto d : w_dims) w->add_dims(d);
  w->set_raw_data(w_raw);
  auto* n = g->add_node();
  n->set_op_type("Add");
  n->set_name("add");
  n->add_input("x");
  n->add_input("w");
  n->add_output("y");
  return bytes_of(m);
}

// x [1, 1, 2, 2] → Resize(nearest, scales) → y
std::string resize_model(float scale) {
  auto m = model(11);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", {1, 1, 2, 2});
  set_shape(g->add_output(), "y", {1, 1, -1, -1});
  auto* roi = g->add_initializer();
  roi->set_name("roi");
  roi->set_data_type(::onnx::TensorProto::FLOAT);
  roi->add_dims(0);
  auto* scales = g->add_initializer();
  scales->set_name("scales");
  scales->set_data_type(::onnx::TensorProto::FLOAT);
  scales->add_dims(4);
  for (float s : {1.0f, 1.0f, scale, scale}) scales->add_float_data(s);
  auto* n = g->add_node();
  n->set_op_type("Resize");
  n->set_name("resize");
  n->add_input("x");
  n->add_input("roi");
  n->add_input("scales");
  n->add_output("y");
  auto* mode = n->add_attribute();
  mode->set_name("mode");
  mode->set_type(::onnx::AttributeProto::STRING);
  mode->set_s("nearest");
  // What SCRFD's exported Resize nodes carry (the executor supports this mode).
  for (const auto& [key, value] : {std::pair<const char*, const char*>{
                                       "coordinate_transformation_mode", "asymmetric"},
                                   {"nearest_mode", "floor"}}) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(::onnx::AttributeProto::STRING);
    a->set_s(value);
  }
  return bytes_of(m);
}

HostTensor small_input() { return HostTensor({1, 1, 2, 2}, {1.0f, 2.0f, 3.0f, 4.0f}); }

}  // namespace

TEST_CASE("onnx: a well-formed model runs (control for the cases below)", "[hostile]") {
  auto executor = Executor::from_bytes(add_model({1}, fmt::float_bytes({0.5f})), "add.onnx");
  const auto out = executor.run({small_input()});
  REQUIRE(out.size() == 1);
  CHECK(out[0].values() == std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f});
}

TEST_CASE("onnx: an initializer claiming 10^12 elements is refused", "[hostile]") {
  const std::string bytes = add_model({1000000, 1000000}, fmt::float_bytes({0.5f}));
  AllocProbe probe;
  CHECK_THAT(refusal([&] { Executor::from_bytes(bytes, "huge.onnx"); }),
             Contains("huge.onnx") && Contains("limit"));
  CHECK(probe.largest() < kSmallAllocation);
}

TEST_CASE("onnx: an initializer claiming 1.6e9 elements with 4 bytes of data is refused "
          "before allocation", "[hostile]") {
  // Under the element limit, so only the data-size check stands between this and 6.4 GB.
  const std::string bytes = add_model({40000, 40000}, fmt::float_bytes({0.5f}));
  AllocProbe probe;
  CHECK_THAT(refusal([&] { Executor::from_bytes(bytes, "lying.onnx"); }),
             Contains("lying.onnx") && Contains("raw_data"));
  CHECK(probe.largest() < kSmallAllocation);
}

TEST_CASE("onnx: a Resize asking for 10^10 output elements is refused before allocation",
          "[hostile]") {
  auto executor = Executor::from_bytes(resize_model(50000.0f), "resize.onnx");
  AllocProbe probe;
  CHECK_THAT(refusal([&] { executor.run({small_input()}); }),
             Contains("resize.onnx") && Contains("max_tensor_elements"));
  CHECK(probe.largest() < kSmallRunAllocation);
}

TEST_CASE("onnx: the run-time element limit is configurable", "[hostile]") {
  instantid::onnx::ExecutorOptions options;
  options.max_tensor_elements = 3;
  auto executor = Executor::from_bytes(add_model({1}, fmt::float_bytes({0.5f})), "add.onnx",
                                       options);
  CHECK_THAT(refusal([&] { executor.run({small_input()}); }),
             Contains("add.onnx") && Contains("limit of 3"));
  options.max_tensor_elements = 0;
  CHECK_THAT(refusal([&] {
               Executor::from_bytes(add_model({1}, fmt::float_bytes({0.5f})), "add.onnx",
                                    options);
             }),
             Contains("max_tensor_elements"));
}

TEST_CASE("onnx: a Resize with a NaN or infinite scale is refused", "[hostile]") {
  for (float scale : {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity()}) {
    auto executor = Executor::from_bytes(resize_model(scale), "resize.onnx");
    CHECK_THAT(refusal([&] { executor.run({small_input()}); }), Contains("resize.onnx"));
  }
}

TEST_CASE("onnx: garbage and truncated models are refused with the file's name", "[hostile]") {
  const std::string good = add_model({1}, fmt::float_bytes({0.5f}));
  CHECK_THAT(refusal([&] { Executor::from_bytes("\xff\xff\xff\xff garbage", "garbage.onnx"); }),
             Contains("garbage.onnx"));
  for (std::size_t cut : {good.size() / 3, good.size() / 2, good.size() - 3}) {
    const std::string message =
        refusal([&] { Executor::from_bytes(good.substr(0, cut), "cut.onnx"); });
    CHECK_THAT(message, Contains("cut.onnx"));
  }
}

TEST_CASE("onnx: NaN and Inf inputs are refused by run()", "[hostile]") {
  auto executor = Executor::from_bytes(add_model({1}, fmt::float_bytes({0.5f})), "add.onnx");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    -std::numeric_limits<float>::infinity()}) {
    HostTensor x = small_input();
    x.values()[2] = bad;
    CHECK_THAT(refusal([&] { executor.run({x}); }), Contains("add.onnx") && Contains("'x'"));
  }
}
