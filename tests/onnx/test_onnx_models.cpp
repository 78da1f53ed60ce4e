// The CPU executor on the real face models of ../shared/models and on a small IResNet exported
// from PyTorch (tests/reference/make_onnx_fixtures.py), against onnxruntime / PyTorch outputs.

#include <catch2/catch.hpp>

#include "golden.hpp"
#include "instantid/onnx/executor.hpp"

using instantid::HostTensor;
using instantid::onnx::Executor;
namespace t = instantid::test;

namespace {

struct ModelCase {
  const char* model;
  std::int64_t height, width;
  float scale;
};

}  // namespace

TEST_CASE("Real SCRFD and MobileFaceNet models match onnxruntime (CPU)", "[onnx][models]") {
  const ModelCase cases[] = {
      {"scrfd_2.5g", 640, 640, 0.0078125f},
      {"scrfd_2.5g", 256, 320, 0.0078125f},
      {"scrfd_500m", 448, 448, 0.0078125f},
      {"scrfd_500m", 256, 320, 0.0078125f},
      {"mobilefacenet_128d", 112, 112, 1.0f / 127.5f},
  };
  for (const ModelCase& c : cases) {
    const std::string model = t::shared_path(std::string("models/") + c.model + ".onnx");
    const HostTensor blob = t::astronaut_blob(c.height, c.width, c.scale);
    if (model.empty() || blob.numel() == 0) {
      WARN("SKIPPED: " << c.model << " or faces/astronaut.png not found under ../shared "
                       "(set INSTANTID_SHARED_DIR); real-model parity NOT checked");
      continue;
    }
    const std::string golden_name = std::string(c.model) + "_" + std::to_string(c.height) + "x" +
                                    std::to_string(c.width) + ".safetensors";
    const auto golden = t::read_safetensors_f32(t::data_path("onnx/" + golden_name));
    Executor e = Executor::load(model);
    const auto out = e.run({blob});
    REQUIRE(out.size() == golden.size());
    for (std::size_t k = 0; k < out.size(); ++k) {
      const HostTensor& want = golden.at("out" + std::to_string(k));
      CAPTURE(c.model, c.height, c.width, k, e.outputs()[k].name);
      REQUIRE(out[k].shape() == want.shape());
      const t::Diff d = t::compare(out[k], want);
      CAPTURE(d.max_abs, d.rel_l2);
      // onnxruntime vs Eigen: same float32 math, different summation order.
      CHECK(d.rel_l2 <= 1e-5);
      CHECK(d.max_abs <= 1e-4);
    }
  }
}

TEST_CASE("Small IResNet (spec §11 structure) matches PyTorch", "[onnx][models]") {
  Executor e = Executor::load(t::data_path("onnx/iresnet_small.onnx"));
  REQUIRE(e.inputs().size() == 1);
  CHECK(e.inputs()[0].name == "data");
  CHECK(e.inputs()[0].dims == std::vector<std::int64_t>{-1, 3, 112, 112});
  CHECK(e.inputs()[0].dim_params[0] == "None");
  const auto golden = t::read_safetensors_f32(t::data_path("onnx/iresnet_small.safetensors"));
  const HostTensor& x = golden.at("input");
  const HostTensor& want = golden.at("output");
  const auto out = e.run({x});
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].shape() == want.shape());
  const t::Diff d = t::compare(out[0], want);
  CAPTURE(d.max_abs, d.rel_l2);
  CHECK(d.rel_l2 <= 1e-5);
  // Batch rows are independent: the second image alone gives the second row.
  HostTensor second({1, 3, 112, 112});
  std::copy(x.data() + 3 * 112 * 112, x.data() + 2 * 3 * 112 * 112, second.data());
  const auto one = e.run({second});
  for (std::int64_t k = 0; k < want.size(1); ++k) {
    CHECK(one[0].data()[k] == Approx(out[0].data()[want.size(1) + k]).margin(1e-5));
  }
}
