#include <catch2/catch.hpp>

#include <cstring>

#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/detector.hpp"

using namespace instantid::face;
using instantid::HostTensor;
using instantid::face::test::goldens;

namespace {

// Zeroed 9-output SCRFD tensors for a square input of `size` (strides 8/16/32, 2 anchors).
std::vector<HostTensor> empty_outputs(int size, bool batched = false) {
  std::vector<HostTensor> outs;
  for (int c : {1, 4, 10}) {
    for (int s : {8, 16, 32}) {
      const std::int64_t rows = static_cast<std::int64_t>(size / s) * (size / s) * 2;
      outs.emplace_back(batched ? std::vector<std::int64_t>{1, rows, c}
                                : std::vector<std::int64_t>{rows, c});
    }
  }
  return outs;
}

DetectedFace box(float x1, float y1, float x2, float y2, float score) {
  DetectedFace f;
  f.bbox = {x1, y1, x2, y2};
  f.score = score;
  return f;
}

}  // namespace

TEST_CASE("SCRFD layout from the number of outputs", "[face][scrfd]") {
  CHECK(scrfd_config(9).feature_maps == 3);
  CHECK(scrfd_config(9).use_kps);
  CHECK(scrfd_config(9).num_anchors == 2);
  CHECK_FALSE(scrfd_config(6).use_kps);
  CHECK(scrfd_config(15).strides == std::vector<int>{8, 16, 32, 64, 128});
  CHECK(scrfd_config(10).num_anchors == 1);
  REQUIRE_THROWS_WITH(scrfd_config(7), Catch::Contains("got 7, expected 6, 9, 10 or 15"));
}

TEST_CASE("SCRFD decode: (y, x, anchor) rows, no +0.5, >= threshold, / det_scale", "[face][scrfd]") {
  for (bool batched : {false, true}) {
    std::vector<HostTensor> outs = empty_outputs(64, batched);
    // Stride 8, 8x8 cells: row (y=2, x=3, a=1) = (2*8+3)*2+1 = 39 → centre (24, 16).
    outs[0].data()[39] = 0.5f;  // exactly the threshold: kept
    float* b = outs[3].data() + 39 * 4;
    b[0] = 1.0f; b[1] = 0.5f; b[2] = 2.0f; b[3] = 1.25f;
    float* k = outs[6].data() + 39 * 10;
    for (int i = 0; i < 10; ++i) k[i] = 0.125f * static_cast<float>(i + 1);
    // Stride 32, 2x2 cells: row (y=1, x=0, a=0) = 4 → centre (0, 32); just below the threshold.
    outs[2].data()[4] = std::nextafter(0.5f, 0.0f);
    const auto faces = scrfd_postprocess(outs, scrfd_config(9), 64, 64, 0.5);
    REQUIRE(faces.size() == 1);
    const auto& f = faces[0];
    CHECK(f.score == 0.5f);
    CHECK(f.bbox == std::array<float, 4>{(24.f - 8.f) / 0.5f, (16.f - 4.f) / 0.5f,
                                         (24.f + 16.f) / 0.5f, (16.f + 10.f) / 0.5f});
    CHECK(f.kps[0] == (24.f + 0.125f * 8) / 0.5f);
    CHECK(f.kps[1] == (16.f + 0.25f * 8) / 0.5f);
    CHECK(f.kps[9] == (16.f + 1.25f * 8) / 0.5f);
  }
}

TEST_CASE("SCRFD decode rejects outputs of the wrong shape", "[face][scrfd]") {
  std::vector<HostTensor> outs = empty_outputs(64);
  REQUIRE_THROWS_WITH(scrfd_postprocess(outs, scrfd_config(9), 96, 96, 1.0),
                      Catch::Contains("output 0 shape: got [128, 1], expected [288, 1]"));
  outs.pop_back();
  REQUIRE_THROWS_WITH(scrfd_postprocess(outs, scrfd_config(9), 64, 64, 1.0),
                      Catch::Contains("outputs: got 8, expected 9"));
}

TEST_CASE("NMS: +1 areas, IoU <= 0.4 kept, greater suppressed", "[face][scrfd]") {
  // A: 14x10 pixels (+1 convention). B shifted by 6: inter 8x10 = 80, IoU 80/200 = 0.4 → kept.
  std::vector<DetectedFace> d = {box(0, 0, 13, 9, 0.9f), box(6, 0, 19, 9, 0.8f)};
  CHECK(nms(d, 0.4f) == std::vector<std::size_t>{0, 1});
  // Shifted by 5: 90/190 > 0.4 → suppressed.
  d[1] = box(5, 0, 18, 9, 0.8f);
  CHECK(nms(d, 0.4f) == std::vector<std::size_t>{0});
  // Chains: C overlaps B only; B is suppressed by A, so C survives.
  d = {box(0, 0, 9, 9, 0.9f), box(2, 0, 11, 9, 0.8f), box(9, 0, 18, 9, 0.7f)};
  CHECK(nms(d, 0.4f) == std::vector<std::size_t>{0, 2});
}

TEST_CASE("Score order: stable ascending then reversed (ties: later index first)", "[face][scrfd]") {
  CHECK(descending_score_order({0.5f, 0.9f, 0.5f, 0.7f, 0.9f}) ==
        std::vector<std::size_t>{4, 1, 3, 2, 0});
}

TEST_CASE("SCRFD post-processing is bit-exact on real network outputs", "[face][scrfd]") {
  // scrfd_2.5g on astronaut.png at 192x192, outputs from onnxruntime (make_face_goldens.py).
  const auto& per = goldens().at("photos").at("astronaut.png").at("detectors").at("scrfd_2.5g.onnx");
  const auto& raw = per.at("raw_outputs");
  const std::string bytes =
      instantid::test::read_file(instantid::face::test::golden_path("scrfd25g_astronaut_192_outputs.bin"));
  std::vector<HostTensor> outs;
  std::size_t offset = 0;
  for (const auto& shape : raw.at("shapes")) {
    HostTensor t(shape.get<std::vector<std::int64_t>>());
    const std::size_t n = static_cast<std::size_t>(t.numel()) * 4;
    REQUIRE(offset + n <= bytes.size());
    std::memcpy(t.data(), bytes.data() + offset, n);
    offset += n;
    outs.push_back(std::move(t));
  }
  REQUIRE(offset == bytes.size());
  const auto faces = scrfd_postprocess(outs, scrfd_config(9), 192, 192, raw.at("det_scale").get<double>());
  const auto& g = per.at("sizes").at("192");
  REQUIRE(faces.size() == g.at("bbox").size());
  for (std::size_t i = 0; i < faces.size(); ++i) {
    CHECK(faces[i].score == g.at("score")[i].get<float>());
    for (std::size_t k = 0; k < 4; ++k) CHECK(faces[i].bbox[k] == g.at("bbox")[i][k].get<float>());
    for (std::size_t k = 0; k < 10; ++k) CHECK(faces[i].kps[k] == g.at("kps")[i][k].get<float>());
  }
}
