#include <catch2/catch.hpp>

#include <cmath>

#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/analysis.hpp"
#include "instantid/face/draw.hpp"

using namespace instantid::face;
using instantid::face::test::golden_path;
using instantid::face::test::goldens;

TEST_CASE("draw_kps matches ComfyUI_InstantID's cv2 drawing", "[face][draw]") {
  for (const auto& c : goldens().at("draw_kps")) {
    std::array<float, 10> kps{};
    for (std::size_t i = 0; i < 10; ++i) kps[i] = c.at("kps")[i].get<float>();
    const Image ours = draw_kps(c.at("w"), c.at("h"), kps);
    const Image golden = swap_rb(load_image(golden_path(c.at("png"))));  // RGB
    REQUIRE(ours.width == golden.width);
    REQUIRE(ours.height == golden.height);
    std::size_t differing = 0;
    for (std::size_t i = 0; i < ours.pixels.size(); i += 3) {
      differing += ours.pixels[i] != golden.pixels[i] || ours.pixels[i + 1] != golden.pixels[i + 1] ||
                   ours.pixels[i + 2] != golden.pixels[i + 2];
    }
    INFO(c.at("png").get<std::string>() << ": " << differing << " differing pixels");
    CHECK(differing == 0);
  }
}

TEST_CASE("draw_kps basics: 60 % limbs, full-intensity circles, RGB", "[face][draw]") {
  const std::array<float, 10> kps = {30, 30, 70, 30, 50, 50, 35, 75, 65, 75};
  const Image img = draw_kps(100, 100, kps);
  const std::uint8_t* centre = img.row(30) + 30 * 3;  // left eye: red circle
  CHECK(std::vector<int>{centre[0], centre[1], centre[2]} == std::vector<int>{255, 0, 0});
  const std::uint8_t* limb = img.row(40) + 40 * 3;  // on the eye→nose limb, outside the circles
  CHECK(std::vector<int>{limb[0], limb[1], limb[2]} == std::vector<int>{153, 0, 0});
  const std::uint8_t* corner = img.row(0);
  CHECK(std::vector<int>{corner[0], corner[1], corner[2]} == std::vector<int>{0, 0, 0});
  REQUIRE_THROWS_WITH(draw_kps(0, 10, kps), Catch::Contains("expected positive"));
}

TEST_CASE("ellipse_polygon: degenerate and axis-aligned cases", "[face][draw]") {
  CHECK(ellipse_polygon(5, 6, 0, 0, 0, 1) == std::vector<int>{5, 6, 5, 6});
  const auto p = ellipse_polygon(10, 10, 3, 2, 0, 90);
  CHECK(p == std::vector<int>{13, 10, 10, 12, 7, 10, 10, 8, 13, 10});
}

TEST_CASE("ComfyUI batch outputs: stacked embeddings and keypoint images of found faces only",
          "[face][draw][analysis]") {
  auto found = [](std::vector<float> emb, float x0) {
    ImageFaces r;
    r.width = 64;
    r.height = 48;
    r.det_size = 640;
    DetectedFace f;
    f.kps = {x0, 10, x0 + 20, 10, x0 + 10, 20, x0 + 2, 30, x0 + 18, 30};
    r.faces = {f};
    r.selected = 0;
    r.embedding = std::move(emb);
    return r;
  };
  ImageFaces none;
  none.width = 64;
  none.height = 48;
  const std::vector<ImageFaces> batch = {found({1, 2, 3}, 10), none, found({4, 5, 6}, 30)};
  const instantid::HostTensor emb = stack_embeddings(batch);
  CHECK(emb.shape() == std::vector<std::int64_t>{2, 1, 3});
  CHECK(emb.values() == std::vector<float>{1, 2, 3, 4, 5, 6});
  const instantid::HostTensor kps = kps_images(batch);
  REQUIRE(kps.shape() == std::vector<std::int64_t>{2, 48, 64, 3});
  const Image second = draw_kps(64, 48, batch[2].faces[0].kps);
  for (std::size_t i = 0; i < second.pixels.size(); ++i) {
    REQUIRE(kps.data()[second.pixels.size() + i] == static_cast<float>(second.pixels[i]) / 255.0f);
  }
  CHECK(stack_embeddings({none}).ndim() == 0);
  CHECK(kps_images({none, none}).ndim() == 0);
  ImageFaces other = found({7, 8}, 10);
  REQUIRE_THROWS_WITH(stack_embeddings({batch[0], other}), Catch::Contains("embedding size: got 2, expected 3"));
  other.width = 32;
  REQUIRE_THROWS_WITH(kps_images({batch[0], other}), Catch::Contains("size: got 32x48, expected 64x48"));
}

TEST_CASE("ComfyUI IMAGE batches convert per entry", "[face][image]") {
  std::vector<float> rgb(2 * 2 * 3 * 3, 1.0f);
  const auto images = images_from_comfy(rgb.data(), 2, 2, 3);
  REQUIRE(images.size() == 2);
  CHECK(images[1].pixels[0] == 255);
  rgb[2 * 3 * 3 + 4] = std::nanf("");
  REQUIRE_THROWS_WITH(images_from_comfy(rgb.data(), 2, 2, 3), Catch::Contains("batch entry 1: ") &&
                                                                   Catch::Contains("NaN"));
}
