#include <catch2/catch.hpp>

#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/imgproc.hpp"

using namespace instantid::face;
using instantid::face::test::goldens;
using instantid::face::test::poly_hash;
using instantid::face::test::synthetic_image;
namespace itest = instantid::test;

TEST_CASE("resize_linear is bit-exact with cv2.resize on synthetic images", "[face][imgproc]") {
  for (const auto& c : goldens().at("resize")) {
    const int w = c.at("w");
    const int h = c.at("h");
    const int dw = c.at("dw");
    const int dh = c.at("dh");
    INFO(w << "x" << h << " -> " << dw << "x" << dh);
    const Image src = synthetic_image(c.at("seed").get<std::uint64_t>(), w, h);
    const Image dst = resize_linear(src, dw, dh);
    REQUIRE(dst.width == dw);
    REQUIRE(dst.height == dh);
    CHECK(poly_hash(dst) == c.at("hash").get<std::string>());
  }
}

TEST_CASE("resize_linear: exact 2x downscale takes the INTER_AREA path", "[face][imgproc]") {
  Image src(4, 2, 1);
  src.pixels = {0, 1, 10, 13, 2, 2, 255, 254};
  const Image dst = resize_linear(src, 2, 1);
  // (0+1+2+2+2)>>2 = 1, (10+13+255+254+2)>>2 = 133
  CHECK(std::vector<int>(dst.pixels.begin(), dst.pixels.end()) == std::vector<int>{1, 133});
  REQUIRE_THROWS_WITH(resize_linear(src, 0, 3), Catch::Contains("expected positive"));
}

TEST_CASE("warp_affine is bit-exact with cv2.warpAffine on synthetic images", "[face][imgproc]") {
  const Image src = synthetic_image(11, 97, 83);
  for (const auto& c : goldens().at("warp")) {
    Affine m;
    for (int i = 0; i < 6; ++i) m[static_cast<std::size_t>(i)] = c.at("m")[static_cast<std::size_t>(i)];
    INFO("matrix " << c.at("m").dump());
    const Image dst = warp_affine(src, m, c.at("w"), c.at("h"));
    CHECK(poly_hash(dst) == c.at("hash").get<std::string>());
  }
  Affine bad = {1, 0, std::nan(""), 0, 1, 0};
  REQUIRE_THROWS_WITH(warp_affine(src, bad, 4, 4), Catch::Contains("non-finite"));
}

TEST_CASE("blob_from_image matches cv2.dnn.blobFromImage(s)", "[face][imgproc]") {
  const auto& b = goldens().at("blob");
  const Image src = synthetic_image(b.at("seed").get<std::uint64_t>(), b.at("w"), b.at("h"));
  const instantid::HostTensor det = blob_from_image(src, 127.5f, 1.0f / 128.0f);
  const instantid::HostTensor rec = blob_from_image(src, 127.5f, static_cast<float>(1.0 / 127.5));
  REQUIRE(det.shape() == std::vector<std::int64_t>{1, 3, 29, 37});
  CHECK(poly_hash(det.data(), det.values().size() * 4) == b.at("det_hash").get<std::string>());
  CHECK(poly_hash(rec.data(), rec.values().size() * 4) == b.at("rec_hash").get<std::string>());
  // Plane 0 is R (BGR channel 2).
  const float p = src.pixels[2];
  CHECK(det.data()[0] == (p - 127.5f) * 0.0078125f);
  CHECK(rec.data()[0] == (p - 127.5f) * 0.0078431377f);
}

TEST_CASE("letterbox sizes and det_scale follow insightface", "[face][imgproc]") {
  struct Case {
    int w, h, s, nw, nh;
    double scale;
  };
  const Case cases[] = {
      {1280, 720, 640, 640, 360, 0.5},         {720, 1280, 640, 360, 640, 0.5},
      {512, 512, 640, 640, 640, 1.25},         {600, 400, 640, 640, 426, 426.0 / 400},
      {400, 600, 192, 128, 192, 192.0 / 600},  {1000, 891, 640, 640, 570, 570.0 / 891},
      {715, 908, 576, 453, 576, 576.0 / 908},  {3, 1000, 640, 1, 640, 0.64},
  };
  for (const Case& c : cases) {
    INFO(c.w << "x" << c.h << " in " << c.s);
    const Letterbox box = letterbox_size(c.w, c.h, c.s, c.s);
    CHECK(box.new_width == c.nw);
    CHECK(box.new_height == c.nh);
    CHECK(box.det_scale == c.scale);
  }
  REQUIRE_THROWS_WITH(letterbox_size(1, 5000, 640, 640), Catch::Contains("aspect ratio too extreme"));
  const Image img = synthetic_image(3, 50, 20);
  Letterbox box;
  const Image canvas = letterbox(img, 64, 64, &box);
  CHECK(box.new_width == 64);
  CHECK(box.new_height == 25);
  CHECK(canvas.row(25)[0] == 0);
  CHECK(canvas.row(63)[63 * 3 + 2] == 0);
}

TEST_CASE("letterbox of real photographs is bit-exact at every detection size", "[face][imgproc][shared]") {
  for (const std::string name : {"astronaut.png", "kaifu_resize.png", "no_face_coffee.png",
                                 "musk_resize.jpeg", "pose.jpg", "pose2.jpg",
                                 "yann-lecun_resize.jpg"}) {
    const std::string path = itest::shared_path("faces/" + name);
    if (path.empty()) {
      WARN("shared/faces/" << name << " absent: letterbox check skipped");
      continue;
    }
    const Image img = load_image(path);
    for (const auto& [size, hash] : goldens().at("photos").at(name).at("letterbox_hash").items()) {
      INFO(name << " at " << size);
      const int s = std::stoi(size);
      CHECK(poly_hash(letterbox(img, s, s, nullptr)) == hash.get<std::string>());
    }
  }
}
