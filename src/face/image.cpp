#include "instantid/face/image.hpp"

#include <stb/stb_image.h>

// src/face/stb_image_bounded.c: the largest single allocation stb_image may make on this thread.
extern "C" void instantid_stbi_set_max_allocation(std::size_t bytes);

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>

#include "instantid/error.hpp"
#include "jpeg_decoder.hpp"

namespace instantid::face {

namespace {

std::uint16_t read_u16(const std::uint8_t* p, bool big_endian) {
  return big_endian ? static_cast<std::uint16_t>((p[0] << 8) | p[1])
                    : static_cast<std::uint16_t>((p[1] << 8) | p[0]);
}

std::uint32_t read_u32(const std::uint8_t* p, bool big_endian) {
  return big_endian ? (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
                          (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]}
                    : (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) |
                          (std::uint32_t{p[1]} << 8) | std::uint32_t{p[0]};
}

// Orientation tag (0x0112) of a TIFF block (the body of an Exif APP1 segment); 1 if absent.
int tiff_orientation(const std::uint8_t* tiff, std::size_t size) {
  if (size < 8) return 1;
  bool big_endian;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    big_endian = false;
  } else if (tiff[0] == 'M' && tiff[1] == 'M') {
    big_endian = true;
  } else {
    return 1;
  }
  if (read_u16(tiff + 2, big_endian) != 42) return 1;
  const std::uint32_t ifd = read_u32(tiff + 4, big_endian);
  if (ifd > size - 2) return 1;
  const std::uint16_t count = read_u16(tiff + ifd, big_endian);
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::size_t entry = std::size_t{ifd} + 2 + std::size_t{i} * 12;
    if (entry + 12 > size) return 1;
    const std::uint16_t tag = read_u16(tiff + entry, big_endian);
    if (tag != 0x0112) continue;
    const std::uint16_t type = read_u16(tiff + entry + 2, big_endian);
    int value;
    if (type == 3) {  // SHORT, stored in the first two bytes of the value field
      value = read_u16(tiff + entry + 8, big_endian);
    } else if (type == 4) {  // LONG (non-standard but seen)
      value = static_cast<int>(read_u32(tiff + entry + 8, big_endian) & 0xffff);
    } else {
      return 1;
    }
    return (value >= 1 && value <= 8) ? value : 1;
  }
  return 1;
}

bool is_jpeg(const std::uint8_t* data, std::size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

bool is_png(const std::uint8_t* data, std::size_t size) {
  static const std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size < 8) return false;
  for (int i = 0; i < 8; ++i) {
    if (data[i] != kSignature[i]) return false;
  }
  return true;
}

// Offset just after the first SOS segment header, or 0 if the marker walk fails.
std::size_t jpeg_scan_start(const std::uint8_t* data, std::size_t size) {
  std::size_t pos = 2;
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return 0;
    const std::uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      pos += 2;
      continue;
    }
    const std::size_t length = read_u16(data + pos + 2, true);
    if (length < 2 || pos + 2 + length > size) return 0;
    if (marker == 0xDA) return pos + 2 + length;
    pos += 2 + length;
  }
  return 0;
}

// Width and height of the first frame header (SOF0..SOF15 but DHT, JPG, DAC), or false if the
// marker walk fails before one. libjpeg refuses sides over 65500 with its own message; this lets
// decode_image apply DecodeOptions first, from the header alone, as for PNG.
bool jpeg_frame_size(const std::uint8_t* data, std::size_t size, std::int64_t* width,
                     std::int64_t* height) {
  std::size_t pos = 2;
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return false;
    const std::uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {
      ++pos;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return false;
    const std::size_t length = read_u16(data + pos + 2, true);
    if (length < 2 || pos + 2 + length > size) return false;
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                       marker != 0xCC;
    if (frame) {
      if (length < 7) return false;
      *height = read_u16(data + pos + 5, true);
      *width = read_u16(data + pos + 7, true);
      return true;
    }
    pos += 2 + length;
  }
  return false;
}

// JPEG data must hold an end-of-image marker after its first scan. PIL refuses truncated files
// ("image file is truncated"); libjpeg would fill the missing rows with grey. (The decoder also
// refuses data that ends early, jpeg_decoder.cpp; this check names the cause from the bytes alone.)
bool jpeg_has_end_after_scan(const std::uint8_t* data, std::size_t size) {
  const std::size_t start = jpeg_scan_start(data, size);
  if (start == 0) return false;
  for (std::size_t i = size - 1; i > start; --i) {
    if (data[i] == 0xD9 && data[i - 1] == 0xFF) return true;
  }
  return false;
}

// PNG data must end with an IEND chunk somewhere after its signature.
bool png_has_iend(const std::uint8_t* data, std::size_t size) {
  if (size < 20) return false;
  for (std::size_t i = size - 8; i >= 8; --i) {
    if (data[i] == 'I' && data[i + 1] == 'E' && data[i + 2] == 'N' && data[i + 3] == 'D') return true;
    if (size - i > 4096) break;  // IEND is the last chunk; allow a little trailing data
  }
  return false;
}

// The first unknown critical PNG chunk (type's first letter upper case, not one stb_image reads)
// among the chunks before IEND that lie wholly inside the data: its offset, or 0 if none. Walking
// stops at a chunk running past the end (stb_image reports those itself, e.g. the zlib bomb's IDAT).
// stb_image would report an unknown chunk by copying its type bytes into a static buffer shared
// by all threads; refusing it here keeps concurrent decodes off that buffer.
std::size_t png_unknown_critical_chunk(const std::uint8_t* data, std::size_t size) {
  static const char* const kKnown[] = {"IHDR", "PLTE", "IDAT", "IEND", "CgBI"};
  std::size_t pos = 8;
  while (pos + 12 <= size) {
    const std::size_t length = read_u32(data + pos, true);
    if (length > size - pos - 12) return 0;
    const std::uint8_t* type = data + pos + 4;
    if (std::memcmp(type, "IEND", 4) == 0) return 0;
    if ((type[0] & 0x20) == 0 &&
        std::none_of(std::begin(kKnown), std::end(kKnown),
                     [&](const char* known) { return std::memcmp(type, known, 4) == 0; })) {
      return pos;
    }
    pos += 12 + length;
  }
  return 0;
}

// Bytes as text: printable ASCII kept, anything else written as \xNN.
std::string printable(const char* bytes, std::size_t count) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < count; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Formats stb_image also reads (JPEG is decoded by libjpeg-turbo) but the pipeline does not accept (ComfyUI loads images with PIL,
// which treats them differently: GIF palettes/frames, PSD layers, HDR float data).
const char* unsupported_format(const std::uint8_t* data, std::size_t size) {
  auto starts = [&](const char* magic) {
    const std::size_t n = std::strlen(magic);
    return size >= n && std::memcmp(data, magic, n) == 0;
  };
  if (starts("GIF8")) return "GIF";
  if (starts("8BPS")) return "PSD";
  if (starts("#?RADIANCE") || starts("#?RGBE")) return "Radiance HDR";
  if (starts("P5") || starts("P6")) return "PNM";
  if (starts("\x53\x80\xF6\x34")) return "Softimage PIC";
  return nullptr;
}

// stb_image's failure reason, printable. Its reasons are string literals except one: "XXXX PNG
// chunk not known", whose first four bytes are the chunk type copied from the file into a static
// buffer (replaying fuzz_image's corpus showed raw bytes and NULs in our messages); bytes outside
// printable ASCII are written as \xNN.
std::string stb_reason() {
  const char* reason = stbi_failure_reason();
  if (reason == nullptr) return "unknown";
  const std::string out = printable(reason, std::strlen(reason));
  // A chunk type starting with a NUL byte leaves nothing readable.
  return out.empty() ? std::string("unknown PNG chunk type starting with \\x00") : out;
}

}  // namespace

int jpeg_exif_orientation(const std::uint8_t* data, std::size_t size) {
  if (data == nullptr || !is_jpeg(data, size)) return 1;
  std::size_t pos = 2;
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return 1;
    const std::uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {
      ++pos;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return 1;  // image data starts: no Exif before it
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
      continue;
    }
    const std::size_t length = read_u16(data + pos + 2, true);
    if (length < 2 || pos + 2 + length > size) return 1;
    const std::uint8_t* body = data + pos + 4;
    const std::size_t body_size = length - 2;
    static const char kExif[6] = {'E', 'x', 'i', 'f', 0, 0};
    if (marker == 0xE1 && body_size >= 6 && std::equal(kExif, kExif + 6, body)) {
      return tiff_orientation(body + 6, body_size - 6);
    }
    pos += 2 + length;
  }
  return 1;
}

Image apply_exif_orientation(const Image& image, int orientation) {
  INSTANTID_CHECK(orientation >= 1 && orientation <= 8, "apply_exif_orientation: orientation: got ",
                  orientation, ", expected 1..8");
  if (orientation == 1) return image;
  const int w = image.width;
  const int h = image.height;
  const int c = image.channels;
  const bool swaps = orientation >= 5;
  Image out(swaps ? h : w, swaps ? w : h, c);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = 0;
      int sy = 0;
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break;          // mirror left-right
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;  // rotate 180
        case 4: sx = x; sy = h - 1 - y; break;          // flip top-bottom
        case 5: sx = y; sy = x; break;                  // transpose
        case 6: sx = y; sy = h - 1 - x; break;          // rotate 90 clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;  // transverse
        case 8: sx = w - 1 - y; sy = x; break;          // rotate 90 counter-clockwise
        default: break;
      }
      const std::uint8_t* src = image.row(sy) + static_cast<std::size_t>(sx) * c;
      std::uint8_t* dst = out.row(y) + static_cast<std::size_t>(x) * c;
      for (int k = 0; k < c; ++k) dst[k] = src[k];
    }
  }
  return out;
}

Image decode_image(const std::string& bytes, const std::string& name, const DecodeOptions& options) {
  INSTANTID_CHECK(!bytes.empty(), "decode_image: ", name, ": file is empty, expected JPEG, PNG, BMP or TGA data");
  INSTANTID_CHECK(bytes.size() <= static_cast<std::size_t>(std::numeric_limits<int>::max()),
                  "decode_image: ", name, ": got ", bytes.size(), " bytes, expected at most 2 GiB");
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  const std::size_t size = bytes.size();
  const int length = static_cast<int>(size);
  const char* other = unsupported_format(data, size);
  if (other != nullptr) {
    throw Error(make_message("decode_image: ", name, ": unsupported image format ", other,
                             ", expected JPEG, PNG, BMP or TGA"));
  }
  auto check_dimensions = [&](std::int64_t w, std::int64_t h) {
    if (w <= 0 || h <= 0 || w > options.max_side || h > options.max_side || w * h > options.max_pixels) {
      throw Error(make_message("decode_image: ", name, ": image dimensions: got ", w, "x", h,
                               ", expected sides in 1..", options.max_side, " and at most ",
                               options.max_pixels, " pixels (DecodeOptions)"));
    }
  };
  if (is_jpeg(data, size)) {
    // libjpeg-turbo with PIL's settings (jpeg_decoder.cpp); stb_image is compiled without JPEG.
    std::int64_t frame_w = 0;
    std::int64_t frame_h = 0;
    if (jpeg_frame_size(data, size, &frame_w, &frame_h)) check_dimensions(frame_w, frame_h);
    Image image = detail::decode_jpeg(data, size, name, [&](int w, int h) {
      check_dimensions(w, h);
      if (!jpeg_has_end_after_scan(data, size)) {
        throw Error(make_message("decode_image: ", name, ": JPEG data is truncated: got ", size,
                                 " bytes without an end-of-image marker after the scan, expected a "
                                 "complete file"));
      }
    });
    if (options.apply_exif_orientation) {
      const int orientation = jpeg_exif_orientation(data, size);
      if (orientation != 1) image = apply_exif_orientation(image, orientation);
    }
    return image;
  }
  // PNG dimensions straight from IHDR: stb_image refuses images over 1 GiB with a vague reason.
  if (is_png(data, size) && size >= 24) {
    check_dimensions(read_u32(data + 16, true), read_u32(data + 20, true));
  }
  int w = 0;
  int h = 0;
  int comp = 0;
  if (stbi_info_from_memory(data, length, &w, &h, &comp) == 0) {
    if (is_png(data, size)) {
      throw Error(make_message("decode_image: ", name, ": PNG header is corrupt or truncated (",
                               stb_reason(), "), got ", size, " bytes"));
    }
    throw Error(make_message("decode_image: ", name, ": unknown image format (", size,
                             " bytes, first bytes not a JPEG/PNG/BMP/TGA signature), expected JPEG, "
                             "PNG, BMP or TGA"));
  }
  check_dimensions(w, h);
  if (is_png(data, size) && !png_has_iend(data, size)) {
    throw Error(make_message("decode_image: ", name, ": PNG data is truncated: got ", size,
                             " bytes without an IEND chunk, expected a complete file"));
  }
  if (is_png(data, size)) {
    const std::size_t chunk = png_unknown_critical_chunk(data, size);
    if (chunk != 0) {
      throw Error(make_message(
          "decode_image: ", name, ": PNG chunk at offset ", chunk, ": got type \"",
          printable(reinterpret_cast<const char*>(data + chunk + 4), 4),
          "\", an unknown critical chunk, expected IHDR, PLTE, IDAT, IEND or an ancillary chunk"));
    }
  }
  int got_w = 0;
  int got_h = 0;
  int got_comp = 0;
  // No legitimate buffer of stb_image exceeds 16 bytes per (padded) pixel (16-bit RGBA PNG rows).
  // A corrupt zlib stream would otherwise grow without bound.
  struct AllocationBound {
    explicit AllocationBound(std::size_t bytes) { instantid_stbi_set_max_allocation(bytes); }
    ~AllocationBound() { instantid_stbi_set_max_allocation(std::size_t{1} << 30); }
  } bound(16 * (static_cast<std::size_t>(w) + 16) * (static_cast<std::size_t>(h) + 16) +
          (std::size_t{1} << 20));
  std::unique_ptr<stbi_uc, void (*)(void*)> rgb(
      stbi_load_from_memory(data, length, &got_w, &got_h, &got_comp, 3), stbi_image_free);
  if (!rgb) {
    throw Error(make_message("decode_image: ", name, ": decoding failed (", stb_reason(),
                             "): got ", size,
                             " bytes of corrupt or truncated data, expected a complete image"));
  }
  INSTANTID_CHECK(got_w == w && got_h == h, "decode_image: ", name, ": decoded size: got ", got_w,
                  "x", got_h, ", expected the header's ", w, "x", h);
  return image_from_u8(rgb.get(), h, w, ChannelOrder::kRgb);  // EXIF orientation: JPEG only
}

Image load_image(const std::string& path, const DecodeOptions& options) {
  std::ifstream in(path, std::ios::binary);
  INSTANTID_CHECK(in.good(), "load_image: cannot open '", path, "': expected a readable image file");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INSTANTID_CHECK(!in.bad(), "load_image: read error on '", path, "'");
  return decode_image(bytes, path, options);
}

Image image_from_comfy(const float* rgb, int height, int width) {
  INSTANTID_CHECK(height > 0 && width > 0, "image_from_comfy: size: got ", height, "x", width,
                  ", expected positive height and width");
  INSTANTID_CHECK(rgb != nullptr, "image_from_comfy: pixels: got null, expected [H, W, 3] float32");
  Image out(width, height, 3);
  const std::size_t count = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  for (std::size_t i = 0; i < count; ++i) {
    for (int k = 0; k < 3; ++k) {
      const float x = rgb[i * 3 + static_cast<std::size_t>(k)];
      if (std::isnan(x)) {
        throw Error(make_message("image_from_comfy: pixel ", i / static_cast<std::size_t>(width), ",",
                                 i % static_cast<std::size_t>(width), " channel ", k,
                                 ": got NaN, expected a finite value in [0, 1]"));
      }
      float v = x * 255.0f;
      v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
      out.pixels[i * 3 + static_cast<std::size_t>(2 - k)] = static_cast<std::uint8_t>(v);  // trunc
    }
  }
  return out;
}

std::vector<Image> images_from_comfy(const float* rgb, int batch, int height, int width) {
  INSTANTID_CHECK(batch > 0, "images_from_comfy: batch: got ", batch, ", expected >= 1");
  INSTANTID_CHECK(height > 0 && width > 0, "images_from_comfy: size: got ", height, "x", width,
                  ", expected positive height and width");
  std::vector<Image> images;
  const std::size_t stride = static_cast<std::size_t>(height) * static_cast<std::size_t>(width) * 3;
  for (int b = 0; b < batch; ++b) {
    try {
      images.push_back(image_from_comfy(rgb + stride * static_cast<std::size_t>(b), height, width));
    } catch (const Error& e) {
      throw Error(make_message("images_from_comfy: batch entry ", b, ": ", e.what()));
    }
  }
  return images;
}

Image image_from_u8(const std::uint8_t* pixels, int height, int width, ChannelOrder order) {
  INSTANTID_CHECK(height > 0 && width > 0, "image_from_u8: size: got ", height, "x", width,
                  ", expected positive height and width");
  INSTANTID_CHECK(pixels != nullptr, "image_from_u8: pixels: got null, expected [H, W, 3] uint8");
  Image out(width, height, 3);
  const std::size_t count = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  if (order == ChannelOrder::kBgr) {
    std::copy(pixels, pixels + count * 3, out.pixels.begin());
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      out.pixels[i * 3 + 0] = pixels[i * 3 + 2];
      out.pixels[i * 3 + 1] = pixels[i * 3 + 1];
      out.pixels[i * 3 + 2] = pixels[i * 3 + 0];
    }
  }
  return out;
}

Image swap_rb(const Image& image) {
  INSTANTID_CHECK(image.channels == 3, "swap_rb: channels: got ", image.channels, ", expected 3");
  Image out = image;
  for (std::size_t i = 0; i + 2 < out.pixels.size(); i += 3) std::swap(out.pixels[i], out.pixels[i + 2]);
  return out;
}

}  // namespace instantid::face
