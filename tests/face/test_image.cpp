#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/image.hpp"
#include "support/refusal.hpp"

using namespace instantid::face;
using instantid::face::test::golden_path;
using instantid::face::test::goldens;
namespace itest = instantid::test;

using instantid::test::refusal;

namespace {

std::string png_header(std::uint32_t w, std::uint32_t h) {
  std::string s("\x89PNG\r\n\x1a\n", 8);
  auto be32 = [&](std::uint32_t v) {
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be32(13);
  s += "IHDR";
  be32(w);
  be32(h);
  s += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  be32(0);                                       // CRC (stb does not check it)
  s += std::string(64, '\0');
  return s;
}

// A minimal JPEG prefix with one APP1/Exif segment holding an orientation entry.
std::vector<std::uint8_t> exif_jpeg(int orientation, bool big_endian, std::uint16_t type = 3) {
  std::vector<std::uint8_t> tiff;
  auto u16 = [&](std::uint16_t v) {
    if (big_endian) {
      tiff.push_back(static_cast<std::uint8_t>(v >> 8));
      tiff.push_back(static_cast<std::uint8_t>(v));
    } else {
      tiff.push_back(static_cast<std::uint8_t>(v));
      tiff.push_back(static_cast<std::uint8_t>(v >> 8));
    }
  };
  auto u32 = [&](std::uint32_t v) {
    if (big_endian) {
      u16(static_cast<std::uint16_t>(v >> 16));
      u16(static_cast<std::uint16_t>(v));
    } else {
      u16(static_cast<std::uint16_t>(v));
      u16(static_cast<std::uint16_t>(v >> 16));
    }
  };
  tiff.push_back(big_endian ? 'M' : 'I');
  tiff.push_back(big_endian ? 'M' : 'I');
  u16(42);
  u32(8);
  u16(2);  // two entries: an unrelated tag, then orientation
  u16(0x010F);
  u16(2);
  u32(4);
  u32(0);
  u16(0x0112);
  u16(type);
  u32(1);
  u16(static_cast<std::uint16_t>(orientation));
  u16(0);
  u32(0);
  std::vector<std::uint8_t> jpeg = {0xFF, 0xD8, 0xFF, 0xE1};
  const std::size_t length = 2 + 6 + tiff.size();
  jpeg.push_back(static_cast<std::uint8_t>(length >> 8));
  jpeg.push_back(static_cast<std::uint8_t>(length));
  for (char c : std::string("Exif\0\0", 6)) jpeg.push_back(static_cast<std::uint8_t>(c));
  jpeg.insert(jpeg.end(), tiff.begin(), tiff.end());
  jpeg.insert(jpeg.end(), {0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9});
  return jpeg;
}

}  // namespace

TEST_CASE("ComfyUI float image converts like tensor_to_image", "[face][image]") {
  // One pixel per row: RGB values chosen at truncation edges.
  const std::vector<float> rgb = {0.5f, 1.0f, 0.0f,           // 127.5→127, 255, 0
                                  0.999f, -0.2f, 1.5f,        // 254.745→254, clamp 0, clamp 255
                                  0.0039215687f, 0.00392f, 0.25f};  // 1.0000000→1, 0.9996→0, 63.75→63
  const Image img = image_from_comfy(rgb.data(), 3, 1);
  REQUIRE(img.width == 1);
  REQUIRE(img.height == 3);
  // Stored BGR.
  CHECK(std::vector<int>(img.pixels.begin(), img.pixels.end()) ==
        std::vector<int>{0, 255, 127, 255, 0, 254, 63, 0, 1});
}

TEST_CASE("ComfyUI float image: NaN is an error naming the pixel", "[face][image]") {
  std::vector<float> rgb(2 * 3 * 3, 0.5f);
  rgb[1 * 9 + 2 * 3 + 1] = std::numeric_limits<float>::quiet_NaN();  // row 1, col 2, G
  REQUIRE_THROWS_WITH(image_from_comfy(rgb.data(), 2, 3),
                      Catch::Contains("pixel 1,2 channel 1: got NaN"));
  REQUIRE_THROWS_WITH(image_from_comfy(rgb.data(), 0, 3), Catch::Contains("expected positive"));
}

TEST_CASE("uint8 buffers: RGB is swapped, BGR is copied", "[face][image]") {
  const std::vector<std::uint8_t> px = {1, 2, 3, 4, 5, 6};
  const Image rgb = image_from_u8(px.data(), 1, 2, ChannelOrder::kRgb);
  const Image bgr = image_from_u8(px.data(), 1, 2, ChannelOrder::kBgr);
  CHECK(std::vector<int>(rgb.pixels.begin(), rgb.pixels.end()) == std::vector<int>{3, 2, 1, 6, 5, 4});
  CHECK(bgr.pixels == px);
  CHECK(swap_rb(rgb).pixels == px);
}

TEST_CASE("PNG decodes to BGR", "[face][image]") {
  const Image img = load_image(golden_path("quadrants.png"));
  REQUIRE(img.width == 48);
  REQUIRE(img.height == 32);
  auto bgr_at = [&](int x, int y) {
    const std::uint8_t* p = img.row(y) + x * 3;
    return std::vector<int>{p[0], p[1], p[2]};
  };
  CHECK(bgr_at(5, 5) == std::vector<int>{20, 20, 230});     // red quadrant (RGB 230,20,20)
  CHECK(bgr_at(40, 5) == std::vector<int>{20, 230, 20});
  CHECK(bgr_at(5, 30) == std::vector<int>{230, 20, 20});
  CHECK(bgr_at(40, 30) == std::vector<int>{20, 230, 230});
}

TEST_CASE("EXIF orientation tag parsing", "[face][image]") {
  for (int o = 1; o <= 8; ++o) {
    for (bool be : {false, true}) {
      const auto j = exif_jpeg(o, be);
      CHECK(jpeg_exif_orientation(j.data(), j.size()) == o);
    }
  }
  SECTION("LONG type is accepted, other types and out-of-range values are ignored") {
    auto j = exif_jpeg(6, false, 4);
    CHECK(jpeg_exif_orientation(j.data(), j.size()) == 6);
    j = exif_jpeg(6, false, 5);
    CHECK(jpeg_exif_orientation(j.data(), j.size()) == 1);
    j = exif_jpeg(9, true);
    CHECK(jpeg_exif_orientation(j.data(), j.size()) == 1);
  }
  SECTION("every truncation is bounds-checked and yields 1") {
    const auto j = exif_jpeg(6, true);
    for (std::size_t n = 0; n < j.size() - 6; ++n) {
      INFO("size " << n);
      CHECK(jpeg_exif_orientation(j.data(), n) == 1);
    }
  }
  SECTION("not a JPEG") {
    const std::string png = png_header(4, 4);
    CHECK(jpeg_exif_orientation(reinterpret_cast<const std::uint8_t*>(png.data()), png.size()) == 1);
    CHECK(jpeg_exif_orientation(nullptr, 0) == 1);
  }
}

TEST_CASE("EXIF orientation transforms match PIL exif_transpose", "[face][image]") {
  for (const auto& e : goldens().at("exif")) {
    const std::string file = e.at("file");
    INFO(file);
    const Image img = load_image(golden_path(file));
    REQUIRE(img.width == e.at("w").get<int>());
    REQUIRE(img.height == e.at("h").get<int>());
    for (const auto& p : e.at("probes_rgb")) {
      const int x = p[0];
      const int y = p[1];
      const std::uint8_t* px = img.row(y) + x * 3;
      // PIL's pixels exactly: both decode with libjpeg-turbo (ISLOW, fancy upsampling).
      CHECK(px[2] == p[2].get<int>());
      CHECK(px[1] == p[3].get<int>());
      CHECK(px[0] == p[4].get<int>());
    }
  }
  SECTION("can be disabled") {
    DecodeOptions options;
    options.apply_exif_orientation = false;
    const Image img = load_image(golden_path("exif_6.jpg"), options);
    CHECK(img.width == 48);
    CHECK(img.height == 32);
  }
}

TEST_CASE("apply_exif_orientation moves pixels exactly", "[face][image]") {
  // 3 wide, 2 high, one channel value per pixel: 0 1 2 / 3 4 5.
  Image img(3, 2, 1);
  for (int i = 0; i < 6; ++i) img.pixels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i);
  auto values = [](const Image& im) { return std::vector<int>(im.pixels.begin(), im.pixels.end()); };
  CHECK(values(apply_exif_orientation(img, 2)) == std::vector<int>{2, 1, 0, 5, 4, 3});
  CHECK(values(apply_exif_orientation(img, 3)) == std::vector<int>{5, 4, 3, 2, 1, 0});
  CHECK(values(apply_exif_orientation(img, 4)) == std::vector<int>{3, 4, 5, 0, 1, 2});
  CHECK(values(apply_exif_orientation(img, 5)) == std::vector<int>{0, 3, 1, 4, 2, 5});
  CHECK(values(apply_exif_orientation(img, 6)) == std::vector<int>{3, 0, 4, 1, 5, 2});
  CHECK(values(apply_exif_orientation(img, 7)) == std::vector<int>{5, 2, 4, 1, 3, 0});
  CHECK(values(apply_exif_orientation(img, 8)) == std::vector<int>{2, 5, 1, 4, 0, 3});
  CHECK(apply_exif_orientation(img, 6).width == 2);
  REQUIRE_THROWS_WITH(apply_exif_orientation(img, 0), Catch::Contains("expected 1..8"));
}

TEST_CASE("Bad image files are clear errors", "[face][image]") {
  const std::string jpeg = itest::read_file(golden_path("exif_1.jpg"));
  const std::string png = itest::read_file(golden_path("quadrants.png"));
  REQUIRE(jpeg.size() > 200);
  REQUIRE(png.size() > 100);
  REQUIRE_THROWS_WITH(decode_image("", "empty.png"), Catch::Contains("empty.png: file is empty"));
  REQUIRE_THROWS_WITH(decode_image("GIF89a-not-really-an-image-at-all", "x.gif"),
                      Catch::Contains("x.gif: unsupported image format GIF"));
  REQUIRE_THROWS_WITH(decode_image("hello, this is not an image", "x.txt"),
                      Catch::Contains("x.txt: unknown image format"));
  REQUIRE_THROWS_WITH(decode_image(jpeg.substr(0, jpeg.size() / 2), "half.jpg"),
                      Catch::Contains("JPEG data is truncated"));
  REQUIRE_THROWS_WITH(decode_image(jpeg.substr(0, 40), "head.jpg"), Catch::Contains("head.jpg") &&
                                                                        Catch::Contains("JPEG"));
  REQUIRE_THROWS_WITH(decode_image(png.substr(0, png.size() - 30), "cut.png"),
                      Catch::Contains("PNG data is truncated"));
  REQUIRE_THROWS_WITH(decode_image(png.substr(0, 12), "tiny.png"), Catch::Contains("PNG header"));
  REQUIRE_THROWS_WITH(decode_image(png_header(100000, 100000), "huge.png"),
                      Catch::Contains("image dimensions: got 100000x100000"));
  REQUIRE_THROWS_WITH(decode_image(png_header(16385, 10), "wide.png"),
                      Catch::Contains("image dimensions: got 16385x10, expected sides in 1..16384"));
  REQUIRE_THROWS_WITH(decode_image(png_header(12000, 12000), "big.png"),
                      Catch::Contains("at most 134217728 pixels"));
  // BMP header (no IHDR shortcut): the limit is applied from stbi_info.
  std::string bmp("BM", 2);
  bmp += std::string(12, '\0');
  const std::uint32_t bmp_fields[] = {40, 20000, 100};
  for (std::uint32_t v : bmp_fields) {
    for (int i = 0; i < 4; ++i) bmp.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  bmp += std::string("\x01\x00\x18\x00", 4) + std::string(40, '\0');
  REQUIRE_THROWS_WITH(decode_image(bmp, "wide.bmp"), Catch::Contains("image dimensions: got 20000x100"));
  DecodeOptions small;
  small.max_side = 40;
  REQUIRE_THROWS_WITH(decode_image(png, "quadrants.png", small),
                      Catch::Contains("got 48x32, expected sides in 1..40"));
  small.max_side = 100;
  small.max_pixels = 1000;
  REQUIRE_THROWS_WITH(decode_image(png, "quadrants.png", small), Catch::Contains("at most 1000 pixels"));
  REQUIRE_THROWS_WITH(load_image("/nonexistent/face.png"), Catch::Contains("cannot open"));
  // A PNG whose pixel data is corrupted (IEND intact) fails in the decoder.
  std::string corrupt = png;
  for (std::size_t i = 60; i < corrupt.size() - 20; ++i) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
  REQUIRE_THROWS_AS(decode_image(corrupt, "corrupt.png"), instantid::Error);
}

TEST_CASE("Unknown critical PNG chunks are refused by type, printably", "[face][image]") {
  // stb_image would copy the type bytes into its reason ("XXXX PNG chunk not known", a static
  // buffer); decode_image refuses such chunks first and escapes bytes that are not printable.
  const std::string png = itest::read_file(golden_path("quadrants.png"));
  const std::size_t after_ihdr = 8 + 8 + 13 + 4;  // signature, IHDR header, data, CRC
  REQUIRE(png.substr(12, 4) == "IHDR");
  auto with_chunk = [&](const std::string& type) {
    return png.substr(0, after_ihdr) + std::string("\0\0\0\0", 4) + type +
           std::string("\0\0\0\0", 4) + png.substr(after_ihdr);
  };
  CHECK(refusal([&] { decode_image(with_chunk(std::string("\x81\x82\x1b" "A", 4)), "odd.png"); }) ==
        "decode_image: odd.png: PNG chunk at offset 33: got type \"\\x81\\x82\\x1bA\", an unknown "
        "critical chunk, expected IHDR, PLTE, IDAT, IEND or an ancillary chunk");
  CHECK_THAT(refusal([&] { decode_image(with_chunk(std::string("\0ABC", 4)), "nul.png"); }),
             Catch::Contains("nul.png: PNG chunk at offset 33: got type \"\\x00ABC\""));
  // Ancillary chunks (lower-case first letter) are skipped, as by PNG readers generally.
  CHECK(decode_image(with_chunk("zzAB"), "ancillary.png").pixels ==
        decode_image(png, "quadrants.png").pixels);
}

TEST_CASE("Real PNG photographs decode exactly like cv2.imread", "[face][image][shared]") {
  // goldens.json has no decoded hash for the JPEG photos; their letterbox hashes (test_imgproc)
  // and crops (test_align) are compared exactly instead.
  for (const std::string name : {"astronaut.png", "kaifu_resize.png", "no_face_coffee.png"}) {
    const std::string path = itest::shared_path("faces/" + name);
    if (path.empty()) {
      WARN("shared/faces/" << name << " absent: decode check skipped");
      continue;
    }
    const auto& g = goldens().at("photos").at(name);
    const Image img = load_image(path);
    CHECK(img.width == g.at("w").get<int>());
    CHECK(img.height == g.at("h").get<int>());
    CHECK(instantid::face::test::poly_hash(img) == g.at("decoded_hash").get<std::string>());
  }
}

TEST_CASE("Mutated and truncated image files decode or throw instantid::Error", "[face][image]") {
  // Seeded byte flips and cuts of real JPEG/PNG/BMP data: the decoder must never crash or throw
  // anything but instantid::Error (run under ASan/UBSan in CI's sanitizer build).
  const Image quad = load_image(golden_path("quadrants.png"));
  std::string bmp("BM", 2);
  {
    const std::uint32_t row = 48 * 3;
    const std::uint32_t fields[] = {static_cast<std::uint32_t>(54 + row * 32), 0, 54, 40, 48, 32};
    for (std::uint32_t v : fields) {
      for (int i = 0; i < 4; ++i) bmp.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
    bmp += std::string("\x01\x00\x18\x00", 4) + std::string(24, '\0');
    bmp.append(quad.pixels.begin(), quad.pixels.end());  // bottom-up BGR rows, any content
  }
  const std::string sources[] = {itest::read_file(golden_path("exif_6.jpg")),
                                 itest::read_file(golden_path("quadrants.png")), bmp};
  REQUIRE(decode_image(bmp, "synthetic.bmp").width == 48);
  std::uint64_t x = 12345;
  auto next = [&]() {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x >> 33;
  };
  int decoded = 0;
  int rejected = 0;
  for (const std::string& source : sources) {
    for (int trial = 0; trial < 150; ++trial) {
      std::string data = source;
      const int flips = 1 + static_cast<int>(next() % 8);
      for (int f = 0; f < flips; ++f) {
        data[next() % data.size()] = static_cast<char>(next() & 0xff);
      }
      if (trial % 3 == 0) data.resize(next() % data.size());
      try {
        const Image img = decode_image(data, "mutated");
        CHECK(img.pixels.size() == static_cast<std::size_t>(img.width) * img.height * 3);
        ++decoded;
      } catch (const instantid::Error&) {
        ++rejected;
      }
    }
  }
  INFO(decoded << " decoded, " << rejected << " rejected");
  CHECK(decoded + rejected == 450);
}

TEST_CASE("ComfyUI LoadImage round trip (u8 / 255 then tensor_to_image) is the identity", "[face][image]") {
  // So decoding a file to uint8 directly gives what ComfyUI hands insightface for the same pixels.
  std::vector<float> rgb(256 * 3);
  for (int v = 0; v < 256; ++v) {
    for (int c = 0; c < 3; ++c) rgb[static_cast<std::size_t>(v * 3 + c)] = static_cast<float>(v) / 255.0f;
  }
  const Image img = image_from_comfy(rgb.data(), 1, 256);
  for (int v = 0; v < 256; ++v) {
    REQUIRE(img.pixels[static_cast<std::size_t>(v * 3)] == v);
  }
}
