#include "instantid/face/imgproc.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <vector>

#include "instantid/error.hpp"

namespace instantid::face {

namespace {

// cvRound: round half to even (lrint under the default rounding mode).
int cv_round(double value) { return static_cast<int>(std::lrint(value)); }
int cv_round(float value) { return static_cast<int>(std::lrintf(value)); }

constexpr int kResizeCoefBits = 11;
constexpr int kResizeCoefScale = 1 << kResizeCoefBits;

std::int16_t saturate_short(float value) {
  const int v = cv_round(value);
  return static_cast<std::int16_t>(std::clamp(v, -32768, 32767));
}

void check_image(const Image& image, const char* where) {
  INSTANTID_CHECK(!image.empty() && image.channels > 0 &&
                      image.pixels.size() == static_cast<std::size_t>(image.width) *
                                                 static_cast<std::size_t>(image.height) *
                                                 static_cast<std::size_t>(image.channels),
                  where, ": image: got ", image.width, "x", image.height, "x", image.channels,
                  " with ", image.pixels.size(), " bytes, expected a non-empty contiguous image");
}

Image resize_area_half(const Image& src, int width, int height) {
  const int cn = src.channels;
  Image dst(width, height, cn);
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* s0 = src.row(2 * y);
    const std::uint8_t* s1 = src.row(2 * y + 1);
    std::uint8_t* d = dst.row(y);
    for (int x = 0; x < width; ++x) {
      for (int k = 0; k < cn; ++k) {
        const int a = s0[(2 * x) * cn + k] + s0[(2 * x + 1) * cn + k] + s1[(2 * x) * cn + k] +
                      s1[(2 * x + 1) * cn + k];
        d[x * cn + k] = static_cast<std::uint8_t>((a + 2) >> 2);
      }
    }
  }
  return dst;
}

}  // namespace

Image resize_linear(const Image& src, int width, int height) {
  check_image(src, "resize_linear");
  INSTANTID_CHECK(width > 0 && height > 0, "resize_linear: size: got ", width, "x", height,
                  ", expected positive");
  if (width == src.width && height == src.height) return src;
  const double inv_scale_x = static_cast<double>(width) / src.width;
  const double inv_scale_y = static_cast<double>(height) / src.height;
  const double scale_x = 1.0 / inv_scale_x;
  const double scale_y = 1.0 / inv_scale_y;
  const int iscale_x = cv_round(scale_x);
  const int iscale_y = cv_round(scale_y);
  const bool area_fast = std::abs(scale_x - iscale_x) < DBL_EPSILON &&
                         std::abs(scale_y - iscale_y) < DBL_EPSILON;
  if (area_fast && iscale_x == 2 && iscale_y == 2) return resize_area_half(src, width, height);

  const int cn = src.channels;
  std::vector<int> xofs(static_cast<std::size_t>(width));
  std::vector<std::int16_t> alpha(static_cast<std::size_t>(width) * 2);
  for (int dx = 0; dx < width; ++dx) {
    float fx = static_cast<float>((dx + 0.5) * scale_x - 0.5);
    int sx = static_cast<int>(std::floor(fx));
    fx -= static_cast<float>(sx);
    if (sx < 0) {
      fx = 0.f;
      sx = 0;
    }
    if (sx >= src.width - 1) {
      fx = 0.f;
      sx = src.width - 1;
    }
    xofs[static_cast<std::size_t>(dx)] = sx;
    alpha[static_cast<std::size_t>(dx) * 2] = saturate_short((1.f - fx) * kResizeCoefScale);
    alpha[static_cast<std::size_t>(dx) * 2 + 1] = saturate_short(fx * kResizeCoefScale);
  }
  // Horizontal pass over every source row once (rows are reused by neighbouring outputs).
  std::vector<int> horizontal(static_cast<std::size_t>(src.height) * width * cn);
  for (int y = 0; y < src.height; ++y) {
    const std::uint8_t* s = src.row(y);
    int* d = horizontal.data() + static_cast<std::size_t>(y) * width * cn;
    for (int dx = 0; dx < width; ++dx) {
      const int sx = xofs[static_cast<std::size_t>(dx)];
      const int a0 = alpha[static_cast<std::size_t>(dx) * 2];
      const int a1 = alpha[static_cast<std::size_t>(dx) * 2 + 1];
      for (int k = 0; k < cn; ++k) {
        d[dx * cn + k] = sx + 1 < src.width ? s[sx * cn + k] * a0 + s[(sx + 1) * cn + k] * a1
                                            : s[sx * cn + k] * kResizeCoefScale;
      }
    }
  }
  Image dst(width, height, cn);
  for (int dy = 0; dy < height; ++dy) {
    float fy = static_cast<float>((dy + 0.5) * scale_y - 0.5);
    const int sy = static_cast<int>(std::floor(fy));
    fy -= static_cast<float>(sy);
    const int b0 = saturate_short((1.f - fy) * kResizeCoefScale);
    const int b1 = saturate_short(fy * kResizeCoefScale);
    const int y0 = std::clamp(sy, 0, src.height - 1);
    const int y1 = std::clamp(sy + 1, 0, src.height - 1);
    const int* r0 = horizontal.data() + static_cast<std::size_t>(y0) * width * cn;
    const int* r1 = horizontal.data() + static_cast<std::size_t>(y1) * width * cn;
    std::uint8_t* d = dst.row(dy);
    for (int i = 0; i < width * cn; ++i) {
      const int v = (((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2;
      d[i] = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
    }
  }
  return dst;
}

Image warp_affine(const Image& src, const Affine& m, int width, int height) {
  check_image(src, "warp_affine");
  INSTANTID_CHECK(width > 0 && height > 0, "warp_affine: size: got ", width, "x", height,
                  ", expected positive");
  for (double v : m) {
    INSTANTID_CHECK(std::isfinite(v), "warp_affine: matrix: got a non-finite element, expected finite");
  }
  // Invert m (OpenCV's warpAffine without WARP_INVERSE_MAP).
  double d = m[0] * m[4] - m[1] * m[3];
  d = d != 0.0 ? 1.0 / d : 0.0;
  const double a11 = m[4] * d;
  const double a22 = m[0] * d;
  double i00 = a11;
  double i01 = m[1] * -d;
  double i10 = m[3] * -d;
  double i11 = a22;
  const double b1 = -i00 * m[2] - i01 * m[5];
  const double b2 = -i10 * m[2] - i11 * m[5];
  constexpr int kAbBits = 10;
  constexpr int kAbScale = 1 << kAbBits;
  constexpr int kInterBits = 5;
  constexpr int kInterTab = 1 << kInterBits;
  constexpr int kRoundDelta = kAbScale / kInterTab / 2;
  std::vector<int> adelta(static_cast<std::size_t>(width));
  std::vector<int> bdelta(static_cast<std::size_t>(width));
  for (int x = 0; x < width; ++x) {
    adelta[static_cast<std::size_t>(x)] = cv_round(i00 * x * kAbScale);
    bdelta[static_cast<std::size_t>(x)] = cv_round(i10 * x * kAbScale);
  }
  const int cn = src.channels;
  Image dst(width, height, cn);
  for (int y = 0; y < height; ++y) {
    const int x0 = cv_round((i01 * y + b1) * kAbScale) + kRoundDelta;
    const int y0 = cv_round((i11 * y + b2) * kAbScale) + kRoundDelta;
    std::uint8_t* out = dst.row(y);
    for (int x = 0; x < width; ++x) {
      const int xx = (x0 + adelta[static_cast<std::size_t>(x)]) >> (kAbBits - kInterBits);
      const int yy = (y0 + bdelta[static_cast<std::size_t>(x)]) >> (kAbBits - kInterBits);
      const int sx = std::clamp(xx >> kInterBits, -32768, 32767);
      const int sy = std::clamp(yy >> kInterBits, -32768, 32767);
      const int ax = xx & (kInterTab - 1);
      const int ay = yy & (kInterTab - 1);
      const int w[4] = {(32 - ax) * (32 - ay) * 32, ax * (32 - ay) * 32, (32 - ax) * ay * 32,
                        ax * ay * 32};
      const int tx[4] = {sx, sx + 1, sx, sx + 1};
      const int ty[4] = {sy, sy, sy + 1, sy + 1};
      for (int k = 0; k < cn; ++k) {
        int acc = 0;
        for (int t = 0; t < 4; ++t) {
          if (tx[t] >= 0 && tx[t] < src.width && ty[t] >= 0 && ty[t] < src.height) {
            acc += src.row(ty[t])[tx[t] * cn + k] * w[t];
          }
        }
        out[x * cn + k] = static_cast<std::uint8_t>(std::clamp((acc + (1 << 14)) >> 15, 0, 255));
      }
    }
  }
  return dst;
}

HostTensor blob_from_image(const Image& bgr, float mean, float scale) {
  check_image(bgr, "blob_from_image");
  INSTANTID_CHECK(bgr.channels == 3, "blob_from_image: channels: got ", bgr.channels, ", expected 3 (BGR)");
  const std::int64_t h = bgr.height;
  const std::int64_t w = bgr.width;
  HostTensor blob({1, 3, h, w});
  float* out = blob.data();
  const std::size_t plane = static_cast<std::size_t>(h * w);
  for (std::size_t i = 0; i < plane; ++i) {
    for (std::size_t c = 0; c < 3; ++c) {
      const float p = static_cast<float>(bgr.pixels[i * 3 + (2 - c)]);
      out[c * plane + i] = (p - mean) * scale;
    }
  }
  return blob;
}

Letterbox letterbox_size(int image_width, int image_height, int input_width, int input_height) {
  INSTANTID_CHECK(image_width > 0 && image_height > 0, "letterbox: image size: got ", image_width,
                  "x", image_height, ", expected positive");
  INSTANTID_CHECK(input_width > 0 && input_height > 0, "letterbox: input size: got ", input_width,
                  "x", input_height, ", expected positive");
  const double im_ratio = static_cast<double>(image_height) / image_width;
  const double model_ratio = static_cast<double>(input_height) / input_width;
  Letterbox box;
  if (im_ratio > model_ratio) {
    box.new_height = input_height;
    box.new_width = static_cast<int>(box.new_height / im_ratio);
  } else {
    box.new_width = input_width;
    box.new_height = static_cast<int>(box.new_width * im_ratio);
  }
  // cv2.resize refuses a zero-sized target; insightface would raise there too.
  INSTANTID_CHECK(box.new_width > 0 && box.new_height > 0, "letterbox: resized size of a ",
                  image_width, "x", image_height, " image in ", input_width, "x", input_height,
                  ": got ", box.new_width, "x", box.new_height,
                  ", expected at least 1x1 (aspect ratio too extreme)");
  box.det_scale = static_cast<double>(box.new_height) / image_height;
  return box;
}

Image letterbox(const Image& bgr, int input_width, int input_height, Letterbox* geometry) {
  check_image(bgr, "letterbox");
  const Letterbox box = letterbox_size(bgr.width, bgr.height, input_width, input_height);
  const Image resized = resize_linear(bgr, box.new_width, box.new_height);
  Image canvas(input_width, input_height, bgr.channels);
  const std::size_t row_bytes = static_cast<std::size_t>(box.new_width) * bgr.channels;
  for (int y = 0; y < box.new_height; ++y) {
    std::copy(resized.row(y), resized.row(y) + row_bytes, canvas.row(y));
  }
  if (geometry != nullptr) *geometry = box;
  return canvas;
}

}  // namespace instantid::face
