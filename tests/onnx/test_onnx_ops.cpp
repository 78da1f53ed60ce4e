// Op-by-op tests of the CPU executor on tiny graphs built with the protobuf API. Inputs are small
// integers wherever the op allows, so results must match the naive reference exactly.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>

#include "graph_builder.hpp"
#include "instantid/error.hpp"
#include "instantid/onnx/executor.hpp"

using instantid::Error;
using instantid::HostTensor;
using instantid::onnx::Executor;
using instantid::test::GraphBuilder;
using Catch::Matchers::Contains;

namespace {

std::vector<float> small_ints(std::size_t n, std::uint32_t seed, int lo = -3, int hi = 3) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(dist(rng));
  return v;
}

std::int64_t numel(const std::vector<std::int64_t>& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

HostTensor run1(const GraphBuilder& b, const HostTensor& x) {
  Executor e = b.build();
  auto out = e.run({x});
  REQUIRE(out.size() == 1);
  return out[0];
}

// Naive 2-D convolution, double accumulation.
std::vector<float> conv_ref(const std::vector<float>& x, const std::vector<std::int64_t>& xs,
                            const std::vector<float>& w, const std::vector<std::int64_t>& ws,
                            const std::vector<float>& bias, std::int64_t group,
                            std::int64_t stride, std::int64_t pad, std::int64_t dil,
                            std::int64_t* oh_out, std::int64_t* ow_out) {
  const std::int64_t n = xs[0], c = xs[1], h = xs[2], wd = xs[3], m = ws[0], kh = ws[2],
                     kw = ws[3];
  const std::int64_t oh = (h + 2 * pad - dil * (kh - 1) - 1) / stride + 1;
  const std::int64_t ow = (wd + 2 * pad - dil * (kw - 1) - 1) / stride + 1;
  const std::int64_t cg = c / group, mg = m / group;
  std::vector<float> y(static_cast<std::size_t>(n * m * oh * ow));
  for (std::int64_t b = 0; b < n; ++b)
    for (std::int64_t o = 0; o < m; ++o)
      for (std::int64_t i = 0; i < oh; ++i)
        for (std::int64_t j = 0; j < ow; ++j) {
          double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(o)];
          const std::int64_t g = o / mg;
          for (std::int64_t ci = 0; ci < cg; ++ci)
            for (std::int64_t a = 0; a < kh; ++a)
              for (std::int64_t q = 0; q < kw; ++q) {
                const std::int64_t yy = i * stride - pad + a * dil, xx = j * stride - pad + q * dil;
                if (yy < 0 || yy >= h || xx < 0 || xx >= wd) continue;
                acc += x[static_cast<std::size_t>(((b * c + g * cg + ci) * h + yy) * wd + xx)] *
                       w[static_cast<std::size_t>(((o * cg + ci) * kh + a) * kw + q)];
              }
          y[static_cast<std::size_t>(((b * m + o) * oh + i) * ow + j)] = static_cast<float>(acc);
        }
  *oh_out = oh;
  *ow_out = ow;
  return y;
}

}  // namespace

TEST_CASE("Conv matches a naive convolution exactly (groups, strides, pads, dilations)", "[onnx]") {
  struct Case {
    std::int64_t n, c, h, w, m, k, group, stride, pad, dil;
  };
  const Case cases[] = {
      {1, 3, 7, 9, 5, 3, 1, 1, 1, 1},    // plain 3x3
      {2, 4, 11, 6, 6, 3, 2, 2, 1, 1},   // grouped, strided
      {1, 6, 9, 9, 6, 3, 6, 1, 1, 1},    // depthwise
      {1, 5, 8, 8, 5, 3, 5, 2, 1, 1},    // depthwise strided
      {1, 4, 13, 10, 3, 1, 1, 1, 0, 1},  // pointwise
      {1, 2, 10, 10, 4, 3, 1, 1, 2, 2},  // dilated
      {1, 3, 9, 7, 2, 1, 1, 2, 0, 1},    // 1x1 strided
  };
  std::uint32_t seed = 1;
  // Both CPU paths: the AVX2 direct-packing kernel (when the CPU has it) and Eigen im2col.
  const bool portable = GENERATE(false, true);
  if (portable) {
    setenv("INSTANTID_ONNX_NO_AVX2", "1", 1);
  } else {
    unsetenv("INSTANTID_ONNX_NO_AVX2");
  }
  for (const Case& cs : cases) {
    const std::vector<std::int64_t> xs = {cs.n, cs.c, cs.h, cs.w};
    const std::vector<std::int64_t> ws = {cs.m, cs.c / cs.group, cs.k, cs.k};
    const auto x = small_ints(static_cast<std::size_t>(numel(xs)), seed++);
    const auto w = small_ints(static_cast<std::size_t>(numel(ws)), seed++);
    const auto bias = small_ints(static_cast<std::size_t>(cs.m), seed++);
    GraphBuilder b;
    b.input("x", {-1, cs.c, -1, -1}).output("y");
    b.init_floats("w", ws, w, /*raw=*/true).init_floats("b", {cs.m}, bias);
    auto* node = b.node("Conv", {"x", "w", "b"}, {"y"});
    GraphBuilder::attr(node, "group", cs.group);
    GraphBuilder::attr(node, "strides", std::vector<std::int64_t>{cs.stride, cs.stride});
    GraphBuilder::attr(node, "pads", std::vector<std::int64_t>{cs.pad, cs.pad, cs.pad, cs.pad});
    GraphBuilder::attr(node, "dilations", std::vector<std::int64_t>{cs.dil, cs.dil});
    GraphBuilder::attr(node, "kernel_shape", std::vector<std::int64_t>{cs.k, cs.k});
    std::int64_t oh = 0, ow = 0;
    const auto ref = conv_ref(x, xs, w, ws, bias, cs.group, cs.stride, cs.pad, cs.dil, &oh, &ow);
    const HostTensor y = run1(b, HostTensor(xs, x));
    CAPTURE(portable, cs.c, cs.m, cs.k, cs.group, cs.stride, cs.pad, cs.dil);
    REQUIRE(y.shape() == std::vector<std::int64_t>{cs.n, cs.m, oh, ow});
    REQUIRE(y.values() == ref);
  }
  unsetenv("INSTANTID_ONNX_NO_AVX2");
}

TEST_CASE("BatchNormalization, PRelu, Relu, Sigmoid", "[onnx]") {
  GraphBuilder b;
  b.input("x", {1, 2, 2, 2}).output("y").output("r").output("s");
  b.init_floats("scale", {2}, {2.0f, 0.5f}).init_floats("bias", {2}, {1.0f, -1.0f});
  b.init_floats("mean", {2}, {1.0f, 2.0f}).init_floats("var", {2}, {4.0f - 1e-5f, 1.0f - 1e-5f});
  b.init_floats("slope", {2, 1, 1}, {0.5f, 0.25f});
  b.node("BatchNormalization", {"x", "scale", "bias", "mean", "var"}, {"bn"});
  b.node("PRelu", {"bn", "slope"}, {"y"});
  b.node("Relu", {"x"}, {"r"});
  b.node("Sigmoid", {"x"}, {"s"});
  Executor e = b.build();
  const std::vector<float> x = {1, 3, -1, 5, 2, 4, 0, -2};
  auto out = e.run({HostTensor({1, 2, 2, 2}, x)});
  // channel 0: (x-1)/2*2+1 = x; channel 1: (x-2)/1*0.5-1 = 0.5x-2
  const std::vector<float> bn = {1, 3, -1, 5, -1, 0, -2, -3};
  std::vector<float> prelu;
  for (std::size_t i = 0; i < bn.size(); ++i) {
    prelu.push_back(bn[i] < 0 ? bn[i] * (i < 4 ? 0.5f : 0.25f) : bn[i]);
  }
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(out[0].values()[i] == Approx(prelu[i]).margin(1e-6));
    CHECK(out[1].values()[i] == std::max(x[i], 0.0f));
    CHECK(out[2].values()[i] == Approx(1.0 / (1.0 + std::exp(-x[i]))).epsilon(1e-6));
  }
}

TEST_CASE("Clip with opset 10 attributes and opset 11 inputs", "[onnx]") {
  const std::vector<float> x = {-3, -1, 0, 2, 5, 7};
  {
    GraphBuilder b(10);
    b.input("x", {6}).output("y");
    auto* n = b.node("Clip", {"x"}, {"y"});
    GraphBuilder::attr(n, "min", 0.0f);
    GraphBuilder::attr(n, "max", 6.0f);
    REQUIRE(run1(b, HostTensor({6}, x)).values() == std::vector<float>{0, 0, 0, 2, 5, 6});
  }
  {
    GraphBuilder b(11);
    b.input("x", {6}).output("y").init_floats("lo", {}, {-1.0f});
    b.node("Clip", {"x", "lo", ""}, {"y"});
    REQUIRE(run1(b, HostTensor({6}, x)).values() == std::vector<float>{-1, -1, 0, 2, 5, 7});
  }
}

TEST_CASE("Add/Sub/Mul/Div broadcast like numpy", "[onnx]") {
  GraphBuilder b;
  b.input("a", {2, 3, 1}).input("c", {4}).output("add").output("sub").output("mul").output("div");
  b.node("Add", {"a", "c"}, {"add"});
  b.node("Sub", {"a", "c"}, {"sub"});
  b.node("Mul", {"c", "a"}, {"mul"});
  b.node("Div", {"a", "c"}, {"div"});
  Executor e = b.build();
  const std::vector<float> a = {1, 2, 3, 4, 5, 6}, c = {1, 2, 4, 8};
  auto out = e.run({HostTensor({2, 3, 1}, a), HostTensor({4}, c)});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{2, 3, 4});
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 4; ++j) {
      const auto k = static_cast<std::size_t>(i * 4 + j);
      const auto iu = static_cast<std::size_t>(i), ju = static_cast<std::size_t>(j);
      CHECK(out[0].values()[k] == a[iu] + c[ju]);
      CHECK(out[1].values()[k] == a[iu] - c[ju]);
      CHECK(out[2].values()[k] == a[iu] * c[ju]);
      CHECK(out[3].values()[k] == a[iu] / c[ju]);
    }
  }
}

TEST_CASE("MaxPool, AveragePool (ceil_mode, count_include_pad), GlobalAveragePool", "[onnx]") {
  std::vector<float> x(25);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  GraphBuilder b;
  b.input("x", {1, 1, 5, 5}).output("max").output("avg").output("avgpad").output("gap");
  auto* mp = b.node("MaxPool", {"x"}, {"max"});
  GraphBuilder::attr(mp, "kernel_shape", std::vector<std::int64_t>{2, 2});
  GraphBuilder::attr(mp, "strides", std::vector<std::int64_t>{2, 2});
  auto* ap = b.node("AveragePool", {"x"}, {"avg"});
  GraphBuilder::attr(ap, "kernel_shape", std::vector<std::int64_t>{2, 2});
  GraphBuilder::attr(ap, "strides", std::vector<std::int64_t>{2, 2});
  GraphBuilder::attr(ap, "ceil_mode", std::int64_t{1});
  auto* app = b.node("AveragePool", {"x"}, {"avgpad"});
  GraphBuilder::attr(app, "kernel_shape", std::vector<std::int64_t>{3, 3});
  GraphBuilder::attr(app, "strides", std::vector<std::int64_t>{2, 2});
  GraphBuilder::attr(app, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
  GraphBuilder::attr(app, "count_include_pad", std::int64_t{1});
  b.node("GlobalAveragePool", {"x"}, {"gap"});
  Executor e = b.build();
  auto out = e.run({HostTensor({1, 1, 5, 5}, x)});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{1, 1, 2, 2});
  CHECK(out[0].values() == std::vector<float>{6, 8, 16, 18});
  // ceil_mode: 3x3 output, edge windows average only the valid elements.
  REQUIRE(out[1].shape() == std::vector<std::int64_t>{1, 1, 3, 3});
  CHECK(out[1].values() ==
        std::vector<float>{3, 5, 6.5f, 13, 15, 16.5f, 20.5f, 22.5f, 24});
  // count_include_pad: the padded zeros count in the divisor (always 9).
  REQUIRE(out[2].shape() == std::vector<std::int64_t>{1, 1, 3, 3});
  CHECK(out[2].values()[0] == Approx((0 + 1 + 5 + 6) / 9.0));
  CHECK(out[2].values()[4] == Approx((6 + 7 + 8 + 11 + 12 + 13 + 16 + 17 + 18) / 9.0));
  CHECK(out[3].values() == std::vector<float>{12});
}

TEST_CASE("The SCRFD Resize-with-sizes subgraph: Shape, Gather, Unsqueeze, Slice, Concat",
          "[onnx]") {
  // sizes = Concat(Slice(Shape(x), 0, 2), Unsqueeze(Gather(Shape(ref), 2)), Unsqueeze(Gather(.., 3)))
  GraphBuilder b(11);
  b.input("x", {1, 2, -1, -1}).input("ref", {1, 2, -1, -1}).output("y");
  b.init_ints("i2", {}, {2}).init_ints("i3", {}, {3});
  b.init_ints("s0", {1}, {0}).init_ints("s2", {1}, {2}).init_ints("ax", {1}, {0});
  b.init_floats("roi", {0}, {}).init_floats("scales", {0}, {});
  b.node("Shape", {"x"}, {"sx"});
  b.node("Shape", {"ref"}, {"sr"});
  b.node("Gather", {"sr", "i2"}, {"h"});
  b.node("Gather", {"sr", "i3"}, {"w"});
  GraphBuilder::attr(b.node("Unsqueeze", {"h"}, {"h1"}), "axes", std::vector<std::int64_t>{0});
  GraphBuilder::attr(b.node("Unsqueeze", {"w"}, {"w1"}), "axes", std::vector<std::int64_t>{0});
  b.node("Slice", {"sx", "s0", "s2", "ax"}, {"nc"});
  GraphBuilder::attr(b.node("Concat", {"nc", "h1", "w1"}, {"sizes"}), "axis", std::int64_t{0});
  auto* r = b.node("Resize", {"x", "roi", "scales", "sizes"}, {"up"});
  GraphBuilder::attr(r, "mode", std::string("nearest"));
  GraphBuilder::attr(r, "coordinate_transformation_mode", std::string("asymmetric"));
  GraphBuilder::attr(r, "nearest_mode", std::string("floor"));
  b.node("Add", {"up", "ref"}, {"y"});
  Executor e = b.build();
  std::vector<float> x(2 * 3 * 2);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  auto out = e.run({HostTensor({1, 2, 3, 2}, x), HostTensor({1, 2, 6, 4}, 0.0f)});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{1, 2, 6, 4});
  for (int c = 0; c < 2; ++c)
    for (int yy = 0; yy < 6; ++yy)
      for (int xx = 0; xx < 4; ++xx) {
        CHECK(out[0].values()[static_cast<std::size_t>((c * 6 + yy) * 4 + xx)] ==
              x[static_cast<std::size_t>((c * 3 + yy / 2) * 2 + xx / 2)]);
      }
}

TEST_CASE("Resize with scales and opset-9 Upsample", "[onnx]") {
  const std::vector<float> x = {1, 2, 3, 4};
  {
    GraphBuilder b(11);
    b.input("x", {1, 1, 2, 2}).output("y");
    b.init_floats("roi", {0}, {}).init_floats("scales", {4}, {1, 1, 2, 3});
    auto* r = b.node("Resize", {"x", "roi", "scales"}, {"y"});
    GraphBuilder::attr(r, "coordinate_transformation_mode", std::string("asymmetric"));
    GraphBuilder::attr(r, "nearest_mode", std::string("floor"));
    const HostTensor y = run1(b, HostTensor({1, 1, 2, 2}, x));
    REQUIRE(y.shape() == std::vector<std::int64_t>{1, 1, 4, 6});
    CHECK(y.values() == std::vector<float>{1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2,
                                           3, 3, 3, 4, 4, 4, 3, 3, 3, 4, 4, 4});
  }
  {
    GraphBuilder b(9);
    b.input("x", {1, 1, 2, 2}).output("y").init_floats("scales", {4}, {1, 1, 2, 2});
    b.node("Upsample", {"x", "scales"}, {"y"});
    const HostTensor y = run1(b, HostTensor({1, 1, 2, 2}, x));
    REQUIRE(y.shape() == std::vector<std::int64_t>{1, 1, 4, 4});
    CHECK(y.values() == std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
  }
}

TEST_CASE("Transpose + Reshape(0, -1), the SCRFD head tail", "[onnx]") {
  GraphBuilder b;
  b.input("x", {1, 4, 2, 3}).output("y").init_ints("shape", {2}, {-1, 2}, true);
  GraphBuilder::attr(b.node("Transpose", {"x"}, {"t"}), "perm", std::vector<std::int64_t>{2, 3, 0, 1});
  b.node("Reshape", {"t", "shape"}, {"y"});
  std::vector<float> x(24);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  const HostTensor y = run1(b, HostTensor({1, 4, 2, 3}, x));
  REQUIRE(y.shape() == std::vector<std::int64_t>{12, 2});
  // out[(h, w, c)] = x[c, h, w]
  for (int h = 0; h < 2; ++h)
    for (int w = 0; w < 3; ++w)
      for (int c = 0; c < 4; ++c) {
        CHECK(y.values()[static_cast<std::size_t>((h * 3 + w) * 4 + c)] ==
              x[static_cast<std::size_t>((c * 2 + h) * 3 + w)]);
      }
  GraphBuilder z;
  z.input("x", {2, 3, 4}).output("y").init_ints("shape", {3}, {0, -1, 2});
  z.node("Reshape", {"x", "shape"}, {"y"});
  CHECK(run1(z, HostTensor({2, 3, 4}, 1.0f)).shape() == std::vector<std::int64_t>{2, 6, 2});
}

TEST_CASE("Flatten, Gemm (alpha, beta, transA, transB), MatMul", "[onnx]") {
  GraphBuilder b;
  b.input("x", {2, 3, 1, 1}).output("g").output("gt").output("mm");
  b.init_floats("w", {4, 3}, {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1});
  b.init_floats("c", {4}, {1, 2, 3, 4});
  b.init_floats("m", {3, 2}, {1, 2, 3, 4, 5, 6});
  GraphBuilder::attr(b.node("Flatten", {"x"}, {"f"}), "axis", std::int64_t{1});
  auto* g = b.node("Gemm", {"f", "w", "c"}, {"g"});
  GraphBuilder::attr(g, "transB", std::int64_t{1});
  GraphBuilder::attr(g, "alpha", 2.0f);
  GraphBuilder::attr(g, "beta", 0.5f);
  b.node("Transpose", {"f"}, {"ft"});
  auto* gt = b.node("Gemm", {"ft", "w"}, {"gt"});
  GraphBuilder::attr(gt, "transA", std::int64_t{1});
  GraphBuilder::attr(gt, "transB", std::int64_t{1});
  b.node("MatMul", {"f", "m"}, {"mm"});
  Executor e = b.build();
  auto out = e.run({HostTensor({2, 3, 1, 1}, {1, 2, 3, 4, 5, 6})});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{2, 4});
  CHECK(out[0].values() == std::vector<float>{2.5f, 5, 7.5f, 14, 8.5f, 11, 13.5f, 32});
  CHECK(out[1].values() == std::vector<float>{1, 2, 3, 6, 4, 5, 6, 15});
  REQUIRE(out[2].shape() == std::vector<std::int64_t>{2, 2});
  CHECK(out[2].values() == std::vector<float>{22, 28, 49, 64});
}

TEST_CASE("Constant, Identity, Dropout, Squeeze, Unsqueeze (opset 13 input axes)", "[onnx]") {
  GraphBuilder b(13);
  b.input("x", {1, 3}).output("y").output("sq").output("us");
  auto* c = b.node("Constant", {}, {"k"});
  auto* a = c->add_attribute();
  a->set_name("value");
  a->set_type(::onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(::onnx::TensorProto::FLOAT);
  a->mutable_t()->add_dims(3);
  for (float v : {10.0f, 20.0f, 30.0f}) a->mutable_t()->add_float_data(v);
  b.node("Identity", {"x"}, {"i"});
  b.node("Dropout", {"i"}, {"d"});
  b.node("Add", {"d", "k"}, {"y"});
  b.init_ints("axes0", {1}, {0});
  b.node("Squeeze", {"x", "axes0"}, {"sq"});
  b.init_ints("axes_end", {2}, {-1, 0});
  b.node("Unsqueeze", {"x", "axes_end"}, {"us"});
  Executor e = b.build();
  auto out = e.run({HostTensor({1, 3}, {1, 2, 3})});
  CHECK(out[0].values() == std::vector<float>{11, 22, 33});
  CHECK(out[1].shape() == std::vector<std::int64_t>{3});
  CHECK(out[2].shape() == std::vector<std::int64_t>{1, 1, 3, 1});
}

TEST_CASE("Model metadata: inputs, outputs, node names", "[onnx]") {
  GraphBuilder b;
  b.input("data", {-1, 3, 4, 4}).output("y");
  b.node("Sub", {"data", "data"}, {"z"}, "Sub_0");
  b.node("Relu", {"z"}, {"y"}, "relu_1");
  Executor e = b.build();
  REQUIRE(e.inputs().size() == 1);
  CHECK(e.inputs()[0].name == "data");
  CHECK(e.inputs()[0].dims == std::vector<std::int64_t>{-1, 3, 4, 4});
  CHECK(e.inputs()[0].dim_params[0] == "?");
  CHECK(e.outputs()[0].name == "y");
  CHECK(e.node_names(8) == std::vector<std::string>{"Sub_0", "relu_1"});
  CHECK(e.path() == "test.onnx");
}

// ---- bad input ----

TEST_CASE("Malformed and truncated files are an Error", "[onnx][errors]") {
  GraphBuilder b;
  b.input("x", {1, 4}).output("y").init_floats("w", {4, 4}, std::vector<float>(16, 1.0f), true);
  b.node("MatMul", {"x", "w"}, {"y"});
  const std::string bytes = b.bytes();
  REQUIRE_NOTHROW(Executor::from_bytes(bytes, "ok.onnx"));
  REQUIRE_THROWS_WITH(Executor::from_bytes(bytes.substr(0, bytes.size() / 2), "half.onnx"),
                      Contains("half.onnx") && Contains("truncated"));
  REQUIRE_THROWS_WITH(Executor::from_bytes("", "empty.onnx"), Contains("empty file"));
  REQUIRE_THROWS_WITH(Executor::from_bytes("\xff\xff\xff\xff garbage", "junk.onnx"),
                      Contains("not a valid ONNX model"));
  REQUIRE_THROWS_WITH(Executor::load("/nonexistent/model.onnx"), Contains("no such file"));
}

TEST_CASE("Unsupported op and attribute name the node, op and attribute", "[onnx][errors]") {
  {
    GraphBuilder b;
    b.input("x", {1, 4}).output("y");
    b.node("Softmax", {"x"}, {"y"}, "soft_7");
    REQUIRE_THROWS_WITH(b.build(), Contains("soft_7") && Contains("unsupported op 'Softmax'"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 1, 4, 4}).output("y");
    GraphBuilder::attr(b.node("MaxPool", {"x"}, {"y"}, "pool_3"), "kernel_shape",
                       std::vector<std::int64_t>{2, 2});
    GraphBuilder::attr(b.graph().mutable_node(0), "frobnicate", std::int64_t{1});
    REQUIRE_THROWS_WITH(b.build(), Contains("pool_3") && Contains("MaxPool") &&
                                       Contains("unsupported attribute 'frobnicate'"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 1, 4, 4}).output("y").init_floats("roi", {0}, {}).init_floats("s", {4}, {1, 1, 2, 2});
    GraphBuilder::attr(b.node("Resize", {"x", "roi", "s"}, {"y"}, "up"), "mode",
                       std::string("linear"));
    REQUIRE_THROWS_WITH(b.build(), Contains("'up' (Resize)") && Contains("mode=linear"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 1, 4, 4}).output("y").init_floats("w", {1, 1, 1, 1}, {1});
    GraphBuilder::attr(b.node("Conv", {"x", "w"}, {"y"}, "c0"), "auto_pad", std::string("SAME_UPPER"));
    REQUIRE_THROWS_WITH(b.build(), Contains("'c0' (Conv)") && Contains("auto_pad=SAME_UPPER"));
  }
}

TEST_CASE("Graph structure errors", "[onnx][errors]") {
  {
    GraphBuilder b;
    b.input("x", {1, 4}).output("y");
    b.node("Relu", {"later"}, {"y"}, "first");
    b.node("Relu", {"x"}, {"later"}, "second");
    REQUIRE_THROWS_WITH(b.build(), Contains("'first'") && Contains("topological"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 4}).output("nope");
    b.node("Relu", {"x"}, {"y"});
    REQUIRE_THROWS_WITH(b.build(), Contains("graph output 'nope' is not produced"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 4}).output("y");
    b.node("Add", {"x", "w"}, {"y"});
    auto* t = b.graph().add_initializer();
    t->set_name("w");
    t->set_data_type(::onnx::TensorProto::FLOAT);
    t->add_dims(4);
    t->set_data_location(::onnx::TensorProto::EXTERNAL);
    auto* kv = t->add_external_data();
    kv->set_key("location");
    kv->set_value("weights.bin");
    REQUIRE_THROWS_WITH(b.build(), Contains("initializer 'w'") && Contains("external"));
  }
  {
    GraphBuilder b;
    b.input("x", {1, 4}).output("y").init_floats("w", {4}, {1, 2, 3});
    b.node("Add", {"x", "w"}, {"y"});
    REQUIRE_THROWS_WITH(b.build(), Contains("initializer 'w'") && Contains("holds 3 values, expected 4"));
  }
}

TEST_CASE("Run-time input errors: count, rank, shape, NaN, broadcasting", "[onnx][errors]") {
  GraphBuilder b;
  b.input("x", {-1, 3, 4, 4}).output("y").init_floats("w", {2, 3, 1, 1}, std::vector<float>(6, 1));
  b.node("Conv", {"x", "w"}, {"y"}, "conv");
  Executor e = b.build();
  REQUIRE_THROWS_WITH(e.run({}), Contains("got 0 inputs, expected 1"));
  REQUIRE_THROWS_WITH(e.run({HostTensor({3, 4, 4})}),
                      Contains("input 'x'") && Contains("got shape [3, 4, 4], expected rank 4"));
  REQUIRE_THROWS_WITH(e.run({HostTensor({1, 2, 4, 4})}),
                      Contains("got shape [1, 2, 4, 4], expected [-1, 3, 4, 4]"));
  HostTensor bad({1, 3, 4, 4});
  bad.values()[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(e.run({bad}), Contains("element 5 is nan") && Contains("expected finite"));
  REQUIRE(e.run({HostTensor({2, 3, 4, 4}, 1.0f)})[0].values() == std::vector<float>(64, 3.0f));

  GraphBuilder c;
  c.input("a", {-1}).input("b", {-1}).output("y");
  c.node("Add", {"a", "b"}, {"y"}, "adder");
  Executor ce = c.build();
  REQUIRE_THROWS_WITH(ce.run({HostTensor({3}), HostTensor({4})}),
                      Contains("'adder' (Add)") && Contains("[3] and [4] are not broadcastable"));
}

#ifndef INSTANTID_HAS_CUDA
TEST_CASE("A build without CUDA refuses the cuda device", "[onnx][errors]") {
  GraphBuilder b;
  b.input("x", {1, 4}).output("y");
  b.node("Relu", {"x"}, {"y"});
  instantid::onnx::ExecutorOptions o;
  o.device = instantid::Device{instantid::DeviceType::kCuda, 0};
  REQUIRE_THROWS_WITH(b.build(o), Contains("no CUDA backend"));
}
#endif

TEST_CASE("int64 shape arithmetic, negative Gather indices, negative Slice steps", "[onnx]") {
  // h = ((w / 2) * 3 - w / 2) / 2 + 0 with w = Shape(x)[-1]; y = Reshape(Slice(x, step -1), [-1, h])
  GraphBuilder b(13);
  b.input("x", {2, -1}).output("y").output("rev");
  b.init_ints("last", {}, {-1}).init_ints("two", {}, {2}).init_ints("three", {}, {3});
  b.init_ints("zero", {}, {0});
  b.init_ints("minus1", {1}, {-1}).init_ints("ax0", {1}, {0});
  b.init_ints("st", {1}, {-1}).init_ints("en", {1}, {-1000}).init_ints("ax1", {1}, {1});
  b.init_ints("stp", {1}, {-1});
  b.node("Shape", {"x"}, {"s"});
  b.node("Gather", {"s", "last"}, {"w"});
  b.node("Div", {"w", "two"}, {"h"});
  b.node("Mul", {"h", "three"}, {"h3"});
  b.node("Sub", {"h3", "h"}, {"h1"});     // 2h
  b.node("Div", {"h1", "two"}, {"hh"});   // h
  b.node("Add", {"hh", "zero"}, {"h2"});
  b.node("Unsqueeze", {"h2", "ax0"}, {"h2v"});
  GraphBuilder::attr(b.node("Concat", {"minus1", "h2v"}, {"target"}), "axis", std::int64_t{0});
  b.node("Slice", {"x", "st", "en", "ax1", "stp"}, {"rev"});
  b.node("Reshape", {"rev", "target"}, {"y"});
  Executor e = b.build();
  // x [2, 4]: w = 4, h = 2, target = [-1, 2]
  auto out = e.run({HostTensor({2, 4}, {0, 1, 2, 3, 4, 5, 6, 7})});
  CHECK(out[1].values() == std::vector<float>{3, 2, 1, 0, 7, 6, 5, 4});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{4, 2});
  CHECK(out[0].values() == out[1].values());
  // Integer division by zero is an Error naming the node.
  GraphBuilder z(13);
  z.input("x", {-1}).output("y").init_ints("zero", {}, {0});
  z.node("Shape", {"x"}, {"s"});
  z.node("Div", {"s", "zero"}, {"q"}, "div0");
  z.node("Reshape", {"x", "q"}, {"y"});
  Executor ez = z.build();
  REQUIRE_THROWS_WITH(ez.run({HostTensor({3})}), Contains("'div0' (Div)") && Contains("division by zero"));
}

TEST_CASE("MatMul broadcasts batch dims; Squeeze without axes", "[onnx]") {
  GraphBuilder b(11);
  b.input("a", {2, 1, 2, 3}).input("m", {4, 3, 2}).output("y").output("sq");
  b.node("MatMul", {"a", "m"}, {"y"});
  b.node("Squeeze", {"a"}, {"sq"});
  Executor e = b.build();
  std::vector<float> a(12), m(24);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 5) - 2.0f;
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i % 7) - 3.0f;
  auto out = e.run({HostTensor({2, 1, 2, 3}, a), HostTensor({4, 3, 2}, m)});
  REQUIRE(out[0].shape() == std::vector<std::int64_t>{2, 4, 2, 2});
  for (int bi = 0; bi < 2; ++bi)
    for (int q = 0; q < 4; ++q)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          float acc = 0.0f;
          for (int k = 0; k < 3; ++k) {
            acc += a[static_cast<std::size_t>((bi * 2 + i) * 3 + k)] *
                   m[static_cast<std::size_t>((q * 3 + k) * 2 + j)];
          }
          CHECK(out[0].values()[static_cast<std::size_t>(((bi * 4 + q) * 2 + i) * 2 + j)] == acc);
        }
  CHECK(out[1].shape() == std::vector<std::int64_t>{2, 2, 3});
}

TEST_CASE("Conv followed by Relu / Clip (fused on the CPU) stays exact", "[onnx]") {
  const std::vector<std::int64_t> xs = {1, 4, 9, 11}, ws = {7, 4, 3, 3};
  const auto x = small_ints(static_cast<std::size_t>(numel(xs)), 41);
  const auto w = small_ints(static_cast<std::size_t>(numel(ws)), 42);
  const auto bias = small_ints(7, 43);
  std::int64_t oh = 0, ow = 0;
  const auto ref = conv_ref(x, xs, w, ws, bias, 1, 1, 1, 1, &oh, &ow);
  const bool portable = GENERATE(false, true);
  if (portable) {
    setenv("INSTANTID_ONNX_NO_AVX2", "1", 1);
  } else {
    unsetenv("INSTANTID_ONNX_NO_AVX2");
  }
  GraphBuilder b(11);
  b.input("x", {1, 4, -1, -1}).output("relu").output("clip").output("raw").output("shared_relu");
  b.init_floats("w", ws, w).init_floats("b", {7}, bias);
  b.init_floats("lo", {}, {-4.0f}).init_floats("hi", {}, {5.0f});
  auto pads = [](::onnx::NodeProto* n) {
    GraphBuilder::attr(n, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
  };
  pads(b.node("Conv", {"x", "w", "b"}, {"c1"}));
  b.node("Relu", {"c1"}, {"relu"});  // fused
  pads(b.node("Conv", {"x", "w", "b"}, {"c2"}));
  b.node("Clip", {"c2", "lo", "hi"}, {"clip"});  // fused, opset-11 bounds
  pads(b.node("Conv", {"x", "w", "b"}, {"raw"}));
  b.node("Relu", {"raw"}, {"shared_relu"});  // not fused: raw is also a graph output
  Executor e = b.build();
  const auto all = e.run({HostTensor(xs, x)});
  REQUIRE(all.size() == 4);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(portable, i);
    CHECK(all[0].values()[i] == std::max(ref[i], 0.0f));
    CHECK(all[1].values()[i] == std::min(std::max(ref[i], -4.0f), 5.0f));
    CHECK(all[2].values()[i] == ref[i]);
    CHECK(all[3].values()[i] == std::max(ref[i], 0.0f));
  }
  unsetenv("INSTANTID_ONNX_NO_AVX2");
}
