#pragma once
// JPEG decoding with libjpeg-turbo (internal to instantid_face; decode_image is the public entry).
// Settings are PIL's (ComfyUI's LoadImage): ISLOW inverse DCT, fancy upsampling, libjpeg's colour
// conversion; grey replicated to 3 channels, CMYK/YCCK converted the way PIL's convert("RGB") does.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "instantid/face/image.hpp"

namespace instantid::face::detail {

// More scans than this in one file are refused: each scan walks every block of the image, so a
// progressive file of thousands of tiny scans costs minutes (a known libjpeg denial-of-service
// class; libjpeg-turbo 2.1 has no scan-limit API). Real encoders write about 10.
constexpr int kMaxJpegScans = 1000;

// Decodes the JPEG file `data` (size bytes) into a 3-channel BGR image, no EXIF orientation
// applied. `check_header(width, height)` runs after the header is read and before anything of
// image size is allocated; it throws to refuse. Corrupt-data warnings are accepted (PIL accepts
// them: libjpeg fills grey); data ending early, errors, unsupported colour spaces and more than
// kMaxJpegScans scans throw instantid::Error naming `name`.
Image decode_jpeg(const std::uint8_t* data, std::size_t size, const std::string& name,
                  const std::function<void(int width, int height)>& check_header);

}  // namespace instantid::face::detail
