#include <catch2/catch.hpp>

#include <cmath>

#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/align.hpp"

using namespace instantid::face;
using instantid::face::test::golden_path;
using instantid::face::test::goldens;
namespace itest = instantid::test;

TEST_CASE("Umeyama matches skimage SimilarityTransform on random landmark sets", "[face][align]") {
  double worst = 0.0;
  for (const auto& c : goldens().at("umeyama")) {
    std::array<float, 10> src{};
    for (std::size_t i = 0; i < 10; ++i) src[i] = c.at("src")[i].get<float>();
    const Affine m = estimate_norm(src);
    for (std::size_t i = 0; i < 6; ++i) {
      const double want = c.at("m")[i].get<double>();
      // Linear part ~0.1..2, translation up to ~1e3: compare relative to the element's scale.
      const double err = std::abs(m[i] - want) / std::max(1.0, std::abs(want));
      worst = std::max(worst, err);
      CHECK(err <= 1e-12);  // bit-identical in practice (see align.cpp)
    }
  }
  INFO("worst relative difference " << worst);
  SUCCEED();
}

TEST_CASE("Umeyama: template onto itself is the identity; degenerate points are NaN", "[face][align]") {
  const Affine m = estimate_norm(kArcfaceTemplate);
  const Affine id = {1, 0, 0, 0, 1, 0};
  // float32 intermediates: the translation carries ~1e-5 of rounding (skimage does the same).
  for (std::size_t i = 0; i < 6; ++i) CHECK(std::abs(m[i] - id[i]) < 1e-4);
  std::array<float, 10> same{};
  same.fill(7.0f);
  const Affine nan = estimate_norm(same);
  CHECK(std::isnan(nan[0]));
  const Image img(20, 20, 3);
  REQUIRE_THROWS_WITH(norm_crop(img, same), Catch::Contains("degenerate"));
  REQUIRE_THROWS_WITH(estimate_norm(kArcfaceTemplate, 100), Catch::Contains("multiple of 112 or 128"));
  std::array<float, 10> bad = kArcfaceTemplate;
  bad[3] = std::nanf("");
  REQUIRE_THROWS_WITH(estimate_norm(bad), Catch::Contains("non-finite"));
}

TEST_CASE("norm_crop of real photographs: exact with skimage's matrix, ±1 LSB with ours", "[face][align][shared]") {
  for (const auto& [name, photo] : goldens().at("photos").items()) {
    const std::string path = itest::shared_path("faces/" + name);
    if (path.empty()) {
      WARN("shared/faces/" << name << " absent: crop check skipped");
      continue;
    }
    const Image img = load_image(path);
    for (const auto& [det, per] : photo.at("detectors").items()) {
      if (!per.contains("selected")) continue;
      const auto& sel = per.at("selected");
      const Image golden = load_image(golden_path(sel.at("crop_png")));
      Affine m;
      for (std::size_t i = 0; i < 6; ++i) m[i] = sel.at("m")[i].get<double>();
      const auto& kp = per.at("sizes").at(std::to_string(sel.at("det_size").get<int>())).at("kps")[sel.at("index").get<std::size_t>()];
      std::array<float, 10> kps{};
      for (std::size_t i = 0; i < 10; ++i) kps[i] = kp[i].get<float>();
      const Image with_golden_m = warp_affine(img, m, 112, 112);
      const Image ours = norm_crop(img, kps);
      std::size_t diff_exact = 0;
      std::size_t diff_ours = 0;
      int max_ours = 0;
      for (std::size_t i = 0; i < golden.pixels.size(); ++i) {
        const int a = golden.pixels[i];
        diff_exact += with_golden_m.pixels[i] != a;
        const int d = std::abs(ours.pixels[i] - a);
        diff_ours += d != 0;
        max_ours = std::max(max_ours, d);
      }
      INFO(name << " / " << det << ": " << diff_exact << " values differ with skimage's matrix, "
                << diff_ours << " (max " << max_ours << ") with ours");
      // Same decoded pixels as the goldens' cv2.imread (JPEG too: libjpeg-turbo with the same
      // settings), so warpAffine must be bit-exact and our Umeyama reproduces skimage's matrix.
      CHECK(diff_exact == 0);
      CHECK(diff_ours == 0);
    }
  }
}
