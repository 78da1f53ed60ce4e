#pragma once
// Images of the face pipeline: 8-bit BGR, H×W×3, row-major, as insightface receives them from
// ComfyUI (tensor_to_image) or cv2.imread.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace instantid::face {

// Owning 8-bit image; pixels are [height, width, channels], row-major, contiguous. The pipeline's
// images are BGR with 3 channels; draw_kps returns RGB (it says so).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<std::uint8_t> pixels;  // [height, width, channels], row-major

  Image() = default;
  Image(int w, int h, int c = 3, std::uint8_t fill = 0)
      : width(w), height(h), channels(c),
        pixels(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) *
                   static_cast<std::size_t>(c),
               fill) {}

  bool empty() const { return width == 0 || height == 0; }
  std::uint8_t* row(int y) {
    return pixels.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * channels;
  }
  const std::uint8_t* row(int y) const {
    return pixels.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * channels;
  }
};

struct DecodeOptions {
  // Images larger than this (either side, or in total pixels) are refused before any pixel is
  // decoded, from the header alone.
  int max_side = 16384;
  std::int64_t max_pixels = std::int64_t{1} << 27;  // 134 M pixels (~400 MB as BGR)
  bool apply_exif_orientation = true;              // JPEG APP1 Exif orientation tag, like PIL's exif_transpose
};

// Decodes a JPEG (libjpeg-turbo, with PIL's settings), PNG, BMP or TGA (stb_image) file into BGR.
// Grey, CMYK and RGBA inputs become 3-channel (alpha dropped). `name` only labels error messages.
// Truncated JPEG/PNG data, unknown formats, empty input and dimensions over the limits throw
// instantid::Error.
Image decode_image(const std::string& bytes, const std::string& name,
                   const DecodeOptions& options = {});
Image load_image(const std::string& path, const DecodeOptions& options = {});

// The EXIF orientation (1..8) of a JPEG byte stream; 1 when there is none or the data is not a JPEG.
// Malformed Exif blocks are ignored (orientation 1), never read out of bounds.
int jpeg_exif_orientation(const std::uint8_t* data, std::size_t size);
// Applies an EXIF orientation the way PIL.ImageOps.exif_transpose does (2: mirror, 3: 180°,
// 4: flip, 5: transpose, 6: 90° clockwise, 7: transverse, 8: 90° counter-clockwise).
Image apply_exif_orientation(const Image& image, int orientation);

// ComfyUI IMAGE → insightface input: rgb is [height, width, 3] float32 in [0, 1];
// u8 = trunc(clamp(x * 255.0f, 0, 255)) per element, then RGB → BGR. NaN throws.
Image image_from_comfy(const float* rgb, int height, int width);
// A ComfyUI IMAGE batch [batch, height, width, 3] float32 → one BGR image per batch entry.
std::vector<Image> images_from_comfy(const float* rgb, int batch, int height, int width);

enum class ChannelOrder { kRgb, kBgr };
// pixels: [height, width, 3] uint8, row-major. Returns BGR.
Image image_from_u8(const std::uint8_t* pixels, int height, int width, ChannelOrder order);

// Swaps channels 0 and 2 (BGR <-> RGB).
Image swap_rb(const Image& image);

}  // namespace instantid::face
