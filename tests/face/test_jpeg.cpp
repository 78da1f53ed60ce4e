// JPEG decoding (libjpeg-turbo, src/face/jpeg_decoder.cpp) against the pixels PIL gives ComfyUI,
// and its refusals: data ending early, too many scans, unsupported colour spaces.
// Fixtures and goldens: tests/face/make_jpeg_goldens.py (Pillow, outside CI).

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "face/jpeg_decoder.hpp"
#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/image.hpp"
#include "support/test_data.hpp"
#include "support/refusal.hpp"

namespace itest = instantid::test;
using instantid::face::decode_image;
using instantid::face::DecodeOptions;
using instantid::face::Image;
using instantid::face::load_image;

using instantid::test::refusal;

namespace {

std::string jpeg_path(const std::string& name) { return itest::data_path("face/jpeg/" + name); }

const nlohmann::json& jpeg_goldens() {
  static const nlohmann::json g =
      nlohmann::json::parse(itest::read_file(jpeg_path("jpeg_goldens.json")));
  return g;
}

// One JPEG segment or scan: a marker with its payload, and for SOS its entropy-coded data.
struct Segment {
  std::uint8_t marker = 0;
  std::string bytes;  // from the 0xFF of the marker to the next marker
};

// Splits a JPEG file into SOI, segments, scans (SOS + entropy data, RSTn kept inside) and EOI.
std::vector<Segment> split_jpeg(const std::string& data) {
  std::vector<Segment> out;
  std::size_t pos = 0;
  while (pos + 1 < data.size()) {
    REQUIRE(static_cast<std::uint8_t>(data[pos]) == 0xFF);
    const auto marker = static_cast<std::uint8_t>(data[pos + 1]);
    std::size_t end = pos + 2;
    if (marker != 0xD8 && marker != 0xD9) {
      end += static_cast<std::size_t>((static_cast<std::uint8_t>(data[pos + 2]) << 8) |
                                      static_cast<std::uint8_t>(data[pos + 3]));
    }
    if (marker == 0xDA) {  // entropy data runs to the next marker that is not a stuffed 00 or RSTn
      while (end + 1 < data.size()) {
        const auto b = static_cast<std::uint8_t>(data[end + 1]);
        if (static_cast<std::uint8_t>(data[end]) == 0xFF && b != 0x00 && (b < 0xD0 || b > 0xD7)) {
          break;
        }
        ++end;
      }
    }
    out.push_back({marker, data.substr(pos, end - pos)});
    pos = end;
  }
  return out;
}

std::string join(const std::vector<Segment>& segments) {
  std::string out;
  for (const auto& s : segments) out += s.bytes;
  return out;
}

}  // namespace

TEST_CASE("JPEG decoding matches PIL (ComfyUI's loader) pixel for pixel", "[face][image][jpeg]") {
  const auto& g = jpeg_goldens();
  REQUIRE(g.at("files").size() >= 10);
  for (const auto& e : g.at("files")) {
    const std::string file = e.at("file");
    INFO(file << " (" << e.at("mode").get<std::string>()
              << (e.at("progressive").get<bool>() ? ", progressive" : "") << ")");
    const Image ours = load_image(jpeg_path(file));
    const Image pil = load_image(jpeg_path(e.at("golden")));  // PNG: decoded exactly
    REQUIRE(ours.width == e.at("w").get<int>());
    REQUIRE(ours.height == e.at("h").get<int>());
    REQUIRE(pil.width == ours.width);
    REQUIRE(pil.height == ours.height);
    std::size_t differ = 0;
    int worst = 0;
    for (std::size_t i = 0; i < ours.pixels.size(); ++i) {
      const int d = std::abs(ours.pixels[i] - pil.pixels[i]);
      differ += d != 0;
      worst = std::max(worst, d);
    }
    // Reported so the parity is visible in the log, and required to be exact.
    WARN(file << ": " << differ << " of " << ours.pixels.size()
              << " values differ from PIL (Pillow " << g.at("pillow").get<std::string>()
              << ", libjpeg-turbo " << g.at("libjpeg_turbo").get<std::string>() << "), max "
              << worst);
    CHECK(differ == 0);
  }
}

TEST_CASE("JPEG EXIF orientation is applied after decoding, or not", "[face][image][jpeg]") {
  DecodeOptions raw;
  raw.apply_exif_orientation = false;
  const Image upright = load_image(jpeg_path("exif6_420.jpg"));
  const Image stored = load_image(jpeg_path("exif6_420.jpg"), raw);
  REQUIRE(stored.width == 61);
  REQUIRE(stored.height == 45);
  REQUIRE(upright.width == 45);
  REQUIRE(upright.height == 61);
  const Image rotated = instantid::face::apply_exif_orientation(stored, 6);
  CHECK(rotated.pixels == upright.pixels);
}

TEST_CASE("JPEG data that ends early is refused, never filled with grey", "[face][image][jpeg]") {
  for (const std::string name : {"baseline_420.jpg", "progressive_420.jpg", "restart_420.jpg"}) {
    const std::string jpeg = itest::read_file(jpeg_path(name));
    const auto* data = reinterpret_cast<const std::uint8_t*>(jpeg.data());
    const std::size_t sos = jpeg.find("\xff\xda");
    REQUIRE(sos != std::string::npos);
    INFO(name);
    // decode_jpeg alone, without decode_image's end-marker check: libjpeg's own end of data.
    const auto no_check = [](int, int) {};
    for (std::size_t cut = 1; cut < jpeg.size() - 2; cut += 37) {
      INFO("cut at " << cut << " of " << jpeg.size());
      try {
        instantid::face::detail::decode_jpeg(data, cut, name, no_check);
        FAIL("a truncated file decoded");
      } catch (const instantid::Error& e) {
        const std::string message = e.what();
        CHECK_THAT(message, Catch::Contains(name) && Catch::Contains("JPEG data is truncated"));
        if (cut > sos + 16) CHECK_THAT(message, Catch::Contains("inside the scan data"));
      }
    }
    // decode_image names the missing end-of-image marker from the bytes.
    CHECK_THAT(refusal([&] { decode_image(jpeg.substr(0, (sos + jpeg.size()) / 2), "half.jpg"); }),
               Catch::Contains("half.jpg: JPEG data is truncated") &&
                   Catch::Contains("without an end-of-image marker"));
    CHECK_THAT(refusal([&] { decode_image(jpeg.substr(0, sos / 2), "head.jpg"); }),
               Catch::Contains("head.jpg: JPEG data is truncated") &&
                   Catch::Contains("inside the header"));
  }
}

TEST_CASE("JPEG corrupt-data warnings decode like PIL; errors are clear", "[face][image][jpeg]") {
  const std::string jpeg = itest::read_file(jpeg_path("baseline_420.jpg"));
  const Image clean = decode_image(jpeg, "clean.jpg");
  const auto segments = split_jpeg(jpeg);
  SECTION("entropy data cut short by a marker: the rest is grey, as PIL returns it") {
    std::vector<Segment> cut = segments;
    auto scan =
        std::find_if(cut.begin(), cut.end(), [](const Segment& s) { return s.marker == 0xDA; });
    REQUIRE(scan != cut.end());
    scan->bytes.resize(scan->bytes.size() / 2);
    // The last byte before EOI must not be a lone 0xFF: drop a stuffing pair if the cut made one.
    while (!scan->bytes.empty() && static_cast<std::uint8_t>(scan->bytes.back()) == 0xFF) {
      scan->bytes.pop_back();
    }
    const Image img = decode_image(join(cut), "short_scan.jpg");
    REQUIRE(img.width == clean.width);
    REQUIRE(img.height == clean.height);
    CHECK(img.pixels != clean.pixels);
    CHECK(std::equal(img.row(0), img.row(1), clean.row(0)));  // the first MCU row was complete
  }
  SECTION("a quantisation table id out of range is an error naming libjpeg's reason") {
    std::vector<Segment> bad = segments;
    auto sof =
        std::find_if(bad.begin(), bad.end(), [](const Segment& s) { return s.marker == 0xC0; });
    REQUIRE(sof != bad.end());
    sof->bytes[10 + 2] = '\x07';  // component 1's quantisation table: 7 (libjpeg accepts 0..3)
    CHECK_THAT(refusal([&] { decode_image(join(bad), "bad_dqt.jpg"); }),
               Catch::Contains("bad_dqt.jpg: JPEG") && Catch::Contains("libjpeg-turbo: ") &&
                   Catch::Contains("expected a decodable"));
  }
  SECTION("a 2-component JPEG is refused by colour space") {
    std::string gray = itest::read_file(jpeg_path("grayscale.jpg"));
    std::vector<Segment> parts = split_jpeg(gray);
    auto sof =
        std::find_if(parts.begin(), parts.end(), [](const Segment& s) { return s.marker == 0xC0; });
    REQUIRE(sof != parts.end());
    REQUIRE(sof->bytes[9] == '\x01');
    sof->bytes[9] = '\x02';
    sof->bytes[3] = static_cast<char>(sof->bytes[3] + 3);  // length 11 → 14
    sof->bytes += std::string("\x02\x11\x00", 3);
    CHECK_THAT(
        refusal([&] { decode_image(join(parts), "two.jpg"); }),
        Catch::Contains("two.jpg: JPEG colour space: got unknown with 2 components, expected "
                        "grayscale, YCbCr, RGB, CMYK or YCCK"));
  }
  SECTION("SOF dimensions over DecodeOptions are refused before decoding") {
    DecodeOptions small;
    small.max_side = 63;
    CHECK_THROWS_WITH(
        decode_image(jpeg, "big.jpg", small),
        Catch::Contains("big.jpg: image dimensions: got 64x48, expected sides in 1..63"));
  }
}

TEST_CASE("Progressive JPEGs with more than kMaxJpegScans scans are refused",
          "[face][image][jpeg]") {
  const std::string jpeg = itest::read_file(jpeg_path("progressive_420.jpg"));
  const auto segments = split_jpeg(jpeg);
  REQUIRE(std::count_if(segments.begin(), segments.end(),
                        [](const Segment& s) { return s.marker == 0xDA; }) == 10);
  // Repeat the final scan (an AC refinement): libjpeg warns about a bogus progression and goes on.
  auto with_scans = [&](int extra) {
    std::vector<Segment> out = segments;
    auto last =
        std::find_if(out.rbegin(), out.rend(), [](const Segment& s) { return s.marker == 0xDA; });
    const Segment scan = *last;
    out.insert(last.base(), static_cast<std::size_t>(extra), scan);
    return join(out);
  };
  constexpr int kLimit = instantid::face::detail::kMaxJpegScans;
  const Image many = decode_image(with_scans(kLimit - 10), "many.jpg");
  CHECK(many.width == 64);
  CHECK_THAT(refusal([&] { decode_image(with_scans(kLimit - 9), "too_many.jpg"); }),
             Catch::Contains("too_many.jpg: JPEG scans: got 1001 (reading stopped there), "
                             "expected at most 1000"));
}

TEST_CASE("The input that crashed stb_image's JPEG decoder decodes like PIL",
          "[face][image][jpeg]") {
  // fuzz_image's finding in Debian's stb_image 2.27 (stbi__jpeg_decode_block read out of bounds):
  // a 9x6 JPEG whose quantisation table segment carries junk and whose "Exif\x04\0" block is not
  // Exif (ignored, as PIL does). libjpeg-turbo decodes it; PIL's pixels are the golden.
  const std::string bytes =
      itest::read_file(itest::data_path("../fuzz/regressions/image/stb_jpeg_decode_block_oob"));
  REQUIRE(bytes.size() == 715);
  const Image img = decode_image(bytes, "stb_crash.jpg");
  const Image pil = load_image(jpeg_path("stb_jpeg_decode_block_oob.pil.png"));
  REQUIRE(img.width == 9);
  REQUIRE(img.height == 6);
  CHECK(img.pixels == pil.pixels);
}
