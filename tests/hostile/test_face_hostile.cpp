// Images that lie: headers claiming 10^5 × 10^5 pixels, EXIF blocks pointing outside themselves,
// truncated data, NaN pixels. decode_image must refuse from the header alone (stb_image and
// libjpeg allocate with malloc, invisible to AllocProbe, so the proof here is the message: it
// comes from the header check that runs before either decoder sees the data — src/face/image.cpp).

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <stb/stb_image_write.h>

#include "formats.hpp"
#include "instantid/error.hpp"
#include "support/test_data.hpp"
#include "instantid/face/image.hpp"
#include "support/refusal.hpp"

namespace fmt = instantid::test::formats;
namespace face = instantid::face;
using Catch::Matchers::Contains;

using instantid::test::refusal;

namespace {

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                             static_cast<std::size_t>(size));
}

std::string small_jpeg() {
  std::vector<unsigned char> pixels(9 * 6 * 3);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 7);
  std::string jpeg;
  stbi_write_jpg_to_func(append_bytes, &jpeg, 9, 6, 3, pixels.data(), 90);
  return jpeg;
}

std::string small_png(int w, int h) {
  std::vector<unsigned char> pixels(static_cast<std::size_t>(w * h * 3), 128);
  std::string png;
  stbi_write_png_to_func(append_bytes, &png, w, h, 3, pixels.data(), w * 3);
  return png;
}

}  // namespace

TEST_CASE("image: a PNG header claiming 100000 x 100000 is refused from the header", "[hostile]") {
  const std::string png = fmt::png_header_only(100000, 100000);
  CHECK_THAT(refusal([&] { face::decode_image(png, "huge.png"); }),
             Contains("huge.png") && Contains("100000x100000") && Contains("DecodeOptions"));
}

TEST_CASE("image: a PNG header over DecodeOptions but under stb_image's own cap is refused",
          "[hostile]") {
  // 20000 × 10000 × 3 bytes < 2^30, so stb_image would accept the header and allocate 600 MB.
  const std::string png = fmt::png_header_only(20000, 10000);
  CHECK_THAT(refusal([&] { face::decode_image(png, "big.png"); }),
             Contains("big.png") && Contains("20000x10000") && Contains("DecodeOptions"));
}

TEST_CASE("image: a JPEG frame header claiming 65535 x 65535 is refused", "[hostile]") {
  std::string jpeg = small_jpeg();
  const std::size_t sof = jpeg.find("\xff\xc0");
  REQUIRE(sof != std::string::npos);
  // SOF0: FF C0, length (2), precision (1), height (2), width (2)
  for (std::size_t k : {5u, 6u, 7u, 8u}) jpeg[sof + k] = '\xff';
  CHECK_THAT(refusal([&] { face::decode_image(jpeg, "huge.jpg"); }),
             Contains("65535x65535") && Contains("DecodeOptions"));
}

TEST_CASE("image: a PNG whose zlib stream runs past its end is refused, not inflated to GBs",
          "[hostile]") {
  // fuzz_image's finding: stb_image 2.27 read zeros past the stream's end and asked for 1.4 GB.
  const std::string png = instantid::test::read_file(
      std::string(INSTANTID_SOURCE_DIR) + "/tests/fuzz/regressions/image/png_zlib_bomb");
  REQUIRE(png.size() == 252);
  CHECK_THAT(refusal([&] { face::decode_image(png, "bomb.png"); }),
             Contains("bomb.png") && Contains("outofmem"));
}

TEST_CASE("image: the size limits are configurable", "[hostile]") {
  const std::string png = small_png(7, 5);
  REQUIRE(face::decode_image(png, "small.png").width == 7);
  face::DecodeOptions options;
  SECTION("max_side") {
    options.max_side = 6;
    CHECK_THAT(refusal([&] { face::decode_image(png, "small.png", options); }),
               Contains("7x5") && Contains("1..6"));
  }
  SECTION("max_pixels") {
    options.max_pixels = 34;
    CHECK_THAT(refusal([&] { face::decode_image(png, "small.png", options); }),
               Contains("7x5") && Contains("at most 34 pixels"));
  }
}

TEST_CASE("image: EXIF blocks pointing outside themselves are ignored, never read", "[hostile]") {
  const std::string jpeg = small_jpeg();
  std::vector<std::string> segments;
  {  // IFD0 offset far past the block
    std::string tiff = "II*";
    tiff.push_back('\0');
    fmt::put_le(tiff, 0xfffffff0u, 4);
    std::string payload = std::string("Exif\0\0", 6) + tiff;
    std::string seg = "\xff\xe1";
    fmt::put_be(seg, payload.size() + 2, 2);
    segments.push_back(seg + payload);
  }
  {  // 65535 entries declared, none present
    std::string tiff = "MM";
    fmt::put_be(tiff, 42, 2);
    fmt::put_be(tiff, 8, 4);
    fmt::put_be(tiff, 0xffff, 2);
    std::string payload = std::string("Exif\0\0", 6) + tiff;
    std::string seg = "\xff\xe1";
    fmt::put_be(seg, payload.size() + 2, 2);
    segments.push_back(seg + payload);
  }
  {  // APP1 length larger than the file
    segments.push_back(std::string("\xff\xe1\xff\xf0" "Exif\0\0II", 12));
  }
  {  // orientation 9 (out of range) and 0
    segments.push_back(fmt::exif_orientation_segment(9));
    segments.push_back(fmt::exif_orientation_segment(0, true));
  }
  for (const auto& segment : segments) {
    const std::string bytes = fmt::jpeg_with_segment(jpeg, segment);
    CHECK(face::jpeg_exif_orientation(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                      bytes.size()) == 1);
  }
  // A block cut short inside the TIFF header: every prefix of a valid file reads in bounds.
  const std::string valid = fmt::jpeg_with_segment(jpeg, fmt::exif_orientation_segment(6));
  for (std::size_t n = 0; n < 64; ++n) {
    const std::string prefix = valid.substr(0, n);
    const int orientation = face::jpeg_exif_orientation(
        reinterpret_cast<const std::uint8_t*>(prefix.data()), prefix.size());
    CHECK((orientation >= 1 && orientation <= 8));
  }
}

TEST_CASE("image: truncated files are refused, not decoded into grey", "[hostile]") {
  const std::string jpeg = small_jpeg();
  const std::string png = small_png(7, 5);
  CHECK_THAT(refusal([&] { face::decode_image(jpeg.substr(0, jpeg.size() - 40), "cut.jpg"); }),
             Contains("cut.jpg"));
  CHECK_THAT(refusal([&] { face::decode_image(png.substr(0, png.size() - 20), "cut.png"); }),
             Contains("cut.png"));
  CHECK_THAT(refusal([&] { face::decode_image("", "empty.png"); }), Contains("empty"));
  CHECK_THAT(refusal([&] { face::decode_image("GIF89a-not-really", "x.gif"); }),
             Contains("x.gif"));
}

TEST_CASE("image: NaN pixels of a ComfyUI image are refused", "[hostile]") {
  std::vector<float> rgb(2 * 3 * 3, 0.5f);
  rgb[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(refusal([&] { face::image_from_comfy(rgb.data(), 2, 3); }), Contains("NaN"));
}
