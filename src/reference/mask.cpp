// Spec §6: the per-layer attention mask (ComfyUI_InstantID's resize / pad / crop).

#include <algorithm>
#include <cmath>

#include "instantid/reference.hpp"

namespace instantid::ref {

MaskGrid mask_grid(int original_height, int original_width, std::int64_t num_tokens) {
  INSTANTID_CHECK(original_height > 0 && original_width > 0, "mask original size: got ",
                  original_height, "x", original_width, ", expected positive (oh, ow)");
  INSTANTID_CHECK(num_tokens > 0, "mask num_tokens: got ", num_tokens, ", expected > 0");
  const double oh = original_height;
  const double ow = original_width;
  // Python: mask_h = oh / math.sqrt(oh * ow / seq_len), all in float64.
  const double real_h = oh / std::sqrt(oh * ow / static_cast<double>(num_tokens));
  const auto whole = static_cast<std::int64_t>(real_h);
  INSTANTID_CHECK(whole > 0, "mask grid for ", original_height, "x", original_width, " and ",
                  num_tokens,
                  " tokens: got int(mask_h) = 0, expected >= 1 (aspect ratio too "
                  "extreme for this layer)");
  MaskGrid grid;
  grid.height = whole + (num_tokens % whole != 0 ? 1 : 0);
  grid.width = num_tokens / grid.height;
  INSTANTID_CHECK(grid.width > 0, "mask grid for ", original_height, "x", original_width, " and ",
                  num_tokens, " tokens: got mask_w = 0, expected >= 1");
  return grid;
}

namespace {

struct LinearTap {
  std::int64_t i0, i1;
  float w0, w1;
};

// PyTorch's upsample_bilinear2d source index and weights (align_corners = false), in float.
std::vector<LinearTap> linear_taps(std::int64_t in, std::int64_t out) {
  std::vector<LinearTap> taps(static_cast<std::size_t>(out));
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (std::int64_t o = 0; o < out; ++o) {
    LinearTap& tap = taps[static_cast<std::size_t>(o)];
    if (in == out) {
      tap = {o, o, 1.0f, 0.0f};
      continue;
    }
    float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    tap.i0 = std::min(static_cast<std::int64_t>(std::floor(src)), in - 1);
    tap.w1 = std::min(std::max(src - static_cast<float>(tap.i0), 0.0f), 1.0f);
    tap.i1 = tap.i0 + (tap.i0 < in - 1 ? 1 : 0);
    tap.w0 = 1.0f - tap.w1;
  }
  return taps;
}

}  // namespace

HostTensor bilinear_resize(const HostTensor& images, std::int64_t height, std::int64_t width) {
  INSTANTID_CHECK(images.ndim() == 3 && images.numel() > 0, "bilinear_resize input: got ",
                  images.shape_str(), ", expected a non-empty [M, H, W]");
  INSTANTID_CHECK(height > 0 && width > 0, "bilinear_resize size: got ", height, "x", width,
                  ", expected positive");
  const std::int64_t m = images.size(0), in_h = images.size(1), in_w = images.size(2);
  const std::vector<LinearTap> rows = linear_taps(in_h, height);
  const std::vector<LinearTap> cols = linear_taps(in_w, width);
  HostTensor out({m, height, width});
  for (std::int64_t i = 0; i < m; ++i) {
    const float* src = images.data() + i * in_h * in_w;  // [H, W]
    float* dst = out.data() + i * height * width;        // [height, width]
    for (std::int64_t y = 0; y < height; ++y) {
      const LinearTap& r = rows[static_cast<std::size_t>(y)];
      for (std::int64_t x = 0; x < width; ++x) {
        const LinearTap& c = cols[static_cast<std::size_t>(x)];
        // Same association as PyTorch's CPU kernel: rows of the column interpolation.
        const float top = src[r.i0 * in_w + c.i0] * c.w0 + src[r.i0 * in_w + c.i1] * c.w1;
        const float bottom = src[r.i1 * in_w + c.i0] * c.w0 + src[r.i1 * in_w + c.i1] * c.w1;
        dst[y * width + x] = top * r.w0 + bottom * r.w1;
      }
    }
  }
  return out;
}

HostTensor pad_or_crop_tokens(const HostTensor& rows, std::int64_t num_tokens) {
  INSTANTID_CHECK(rows.ndim() == 2, "pad_or_crop_tokens rows: got ", rows.shape_str(),
                  ", expected [M, L]");
  INSTANTID_CHECK(num_tokens > 0, "pad_or_crop_tokens num_tokens: got ", num_tokens,
                  ", expected > 0");
  const std::int64_t m = rows.size(0), len = rows.size(1);
  HostTensor out({m, num_tokens});
  for (std::int64_t i = 0; i < m; ++i) {
    const float* src = rows.data() + i * len;  // [L]
    float* dst = out.data() + i * num_tokens;  // [N]
    if (len <= num_tokens) {
      const std::int64_t before = (num_tokens - len) / 2;
      std::copy(src, src + len, dst + before);
    } else {
      const std::int64_t start = (len - num_tokens) / 2;
      std::copy(src + start, src + start + num_tokens, dst);
    }
  }
  return out;
}

HostTensor layer_mask(const HostTensor& mask, int original_height, int original_width,
                      std::int64_t num_tokens) {
  INSTANTID_CHECK(mask.ndim() == 3 && mask.numel() > 0, "mask: got ", mask.shape_str(),
                  ", expected a non-empty [M, Hm, Wm]");
  const MaskGrid grid = mask_grid(original_height, original_width, num_tokens);
  const HostTensor resized = bilinear_resize(mask, grid.height, grid.width);
  return pad_or_crop_tokens(resized.reshaped({mask.size(0), grid.height * grid.width}), num_tokens);
}

}  // namespace instantid::ref
