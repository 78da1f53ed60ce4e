// libFuzzer target: image decoding behind decode_image (JPEG: libjpeg-turbo, jpeg_decoder.cpp;
// PNG/BMP/TGA: stb_image without its JPEG decoder; header limits checked first) and the JPEG EXIF
// orientation parser. Only instantid::Error may escape. libjpeg-turbo is Debian's shared library,
// not instrumented: coverage guides mutations through our code only (docs/reliability.md).

#include <cstddef>
#include <cstdint>
#include <string>

#include "instantid/error.hpp"
#include "instantid/face/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace face = instantid::face;
  // Never reads outside [data, data + size), whatever the Exif block claims.
  const int orientation = face::jpeg_exif_orientation(data, size);
  if (orientation < 1 || orientation > 8) __builtin_trap();  // documented range: 1..8

  face::DecodeOptions options;
  options.max_side = 4096;
  options.max_pixels = std::int64_t{1} << 22;
  try {
    const face::Image image =
        face::decode_image(std::string(reinterpret_cast<const char*>(data), size), "fuzz", options);
    if (image.channels != 3 ||
        image.pixels.size() != static_cast<std::size_t>(image.width) *
                                    static_cast<std::size_t>(image.height) * 3u) {
      __builtin_trap();  // decode_image promises a contiguous 3-channel BGR image
    }
  } catch (const instantid::Error&) {
  }
  return 0;
}
