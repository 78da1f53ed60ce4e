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
