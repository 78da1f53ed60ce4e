#include "onnx/cpu_conv_avx2.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "onnx/cpu_parallel.hpp"

namespace instantid::onnx {

namespace {

constexpr std::int64_t kRows = 6;   // output channels per micro-tile
constexpr std::int64_t kCols = 16;  // output pixels per micro-tile (two 8-float registers)

constexpr std::int64_t kDepth = 256;  // K block: a [256][16] panel slice (16 KiB) stays in L1

// c [rows, cols] (ldc) (+)= a [K][6] * b [K][16]; rows <= 6, cols <= 16. The first K block starts
// from the bias (or 0), later blocks from c.
__attribute__((target("avx2,fma"))) void micro_kernel(std::int64_t k_dim, const float* a,
                                                      const float* b, float* c, std::int64_t ldc,
                                                      std::int64_t rows, std::int64_t cols,
                                                      const float* bias, bool accumulate,
                                                      bool last, float lo, float hi) {
  __m256 acc[kRows][2];
  if (accumulate) {
    alignas(32) float tmp[kCols] = {};
    for (std::int64_t r = 0; r < kRows; ++r) {
      if (r < rows) std::memcpy(tmp, c + r * ldc, static_cast<std::size_t>(cols) * sizeof(float));
      acc[r][0] = _mm256_load_ps(tmp);
      acc[r][1] = _mm256_load_ps(tmp + 8);
    }
  } else {
    for (int r = 0; r < kRows; ++r) {
      const float bv = (bias != nullptr && r < rows) ? bias[r] : 0.0f;
      acc[r][0] = _mm256_set1_ps(bv);
      acc[r][1] = _mm256_set1_ps(bv);
    }
  }
  for (std::int64_t k = 0; k < k_dim; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * kCols);
    const __m256 b1 = _mm256_load_ps(b + k * kCols + 8);
    const float* ak = a + k * kRows;
    for (int r = 0; r < kRows; ++r) {
      const __m256 av = _mm256_broadcast_ss(ak + r);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  if (last) {  // fused activation (Relu / Clip) on the final K block
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    for (int r = 0; r < kRows; ++r) {
      acc[r][0] = _mm256_min_ps(_mm256_max_ps(acc[r][0], vlo), vhi);
      acc[r][1] = _mm256_min_ps(_mm256_max_ps(acc[r][1], vlo), vhi);
    }
  }
  if (cols == kCols) {
    for (std::int64_t r = 0; r < rows; ++r) {
      _mm256_storeu_ps(c + r * ldc, acc[r][0]);
      _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
    }
    return;
  }
  alignas(32) float tmp[kCols];
  for (std::int64_t r = 0; r < rows; ++r) {
    _mm256_store_ps(tmp, acc[r][0]);
    _mm256_store_ps(tmp + 8, acc[r][1]);
    std::memcpy(c + r * ldc, tmp, static_cast<std::size_t>(cols) * sizeof(float));
  }
}

}  // namespace

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // INSTANTID_ONNX_NO_AVX2=1 selects the portable Eigen im2col path (tests cover both).
  const char* off = std::getenv("INSTANTID_ONNX_NO_AVX2");
  return has && (off == nullptr || off[0] == '\0' || off[0] == '0');
}

void conv2d_group_avx2(const Conv2dGeometry& g, std::int64_t cg, std::int64_t mg, const float* x,
                       const float* w, const float* bias, float* y, float lo, float hi) {
  const std::int64_t k_dim = cg * g.kh * g.kw;
  const std::int64_t n_cols = g.oh * g.ow;
  const std::int64_t row_tiles = (mg + kRows - 1) / kRows;
  // Packed weights: [row_tiles][K][6], zero rows past mg.
  std::vector<float> ap(static_cast<std::size_t>(row_tiles * k_dim * kRows), 0.0f);
  for (std::int64_t m = 0; m < mg; ++m) {
    float* dst = ap.data() + (m / kRows) * k_dim * kRows + (m % kRows);
    const float* src = w + m * k_dim;
    for (std::int64_t k = 0; k < k_dim; ++k) dst[k * kRows] = src[k];
  }
  const std::int64_t panels = (n_cols + kCols - 1) / kCols;
  // Work units: (panel, slice of row tiles). Small images (few panels) split the output channels
  // too, so every core has work; each unit packs its own panel.
  const std::int64_t target = parallel_threads() * 4;
  const std::int64_t slices =
      panels >= target ? 1 : std::min(row_tiles, (target + panels - 1) / panels);
  const std::int64_t hw = g.h * g.w;
  const bool contiguous_rows = g.sw == 1;
  parallel_run(panels * slices, [&](std::int64_t unit) {
    const std::int64_t p = unit / slices, slice = unit % slices;
    const std::int64_t t_begin = slice * row_tiles / slices;
    const std::int64_t t_end = (slice + 1) * row_tiles / slices;
    if (t_begin >= t_end) return;
    // Packed im2col panel: [K][16], 32-byte aligned.
    thread_local std::vector<float> storage;
    storage.resize(static_cast<std::size_t>(k_dim * kCols + 8));
    float* bp = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(storage.data()) + 31) &
                                         ~std::uintptr_t{31});
    std::int64_t iy0[kCols], ix0[kCols];
    {
      const std::int64_t j0 = p * kCols;
      const std::int64_t cols = std::min(kCols, n_cols - j0);
      for (std::int64_t jj = 0; jj < kCols; ++jj) {
        const std::int64_t j = std::min(j0 + jj, n_cols - 1);
        iy0[jj] = (j / g.ow) * g.sh - g.pad_top;
        ix0[jj] = (j % g.ow) * g.sw - g.pad_left;
      }
      // The panel's 16 pixels lie in one output row when they do not wrap: then a kernel tap
      // reads a contiguous input run (stride 1) and only the ends need bounds checks.
      const bool one_row = contiguous_rows && cols == kCols && iy0[0] == iy0[kCols - 1];
      float* dst = bp;
      for (std::int64_t c = 0; c < cg; ++c) {
        const float* xc = x + c * hw;
        for (std::int64_t ky = 0; ky < g.kh; ++ky) {
          for (std::int64_t kx = 0; kx < g.kw; ++kx, dst += kCols) {
            const std::int64_t dy = ky * g.dh, dx = kx * g.dw;
            if (one_row) {
              const std::int64_t iy = iy0[0] + dy;
              const std::int64_t ix_first = ix0[0] + dx;
              if (iy < 0 || iy >= g.h) {
                std::memset(dst, 0, kCols * sizeof(float));
                continue;
              }
              const float* row = xc + iy * g.w;
              if (ix_first >= 0 && ix_first + kCols <= g.w) {
                std::memcpy(dst, row + ix_first, kCols * sizeof(float));
                continue;
              }
              for (std::int64_t jj = 0; jj < kCols; ++jj) {
                const std::int64_t ix = ix_first + jj;
                dst[jj] = (ix >= 0 && ix < g.w) ? row[ix] : 0.0f;
              }
              continue;
            }
            for (std::int64_t jj = 0; jj < kCols; ++jj) {
              const std::int64_t iy = iy0[jj] + dy, ix = ix0[jj] + dx;
              dst[jj] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? xc[iy * g.w + ix] : 0.0f;
            }
          }
        }
      }
      for (std::int64_t k0 = 0; k0 < k_dim; k0 += kDepth) {
        const std::int64_t depth = std::min(kDepth, k_dim - k0);
        for (std::int64_t t = t_begin; t < t_end; ++t) {
          const std::int64_t m0 = t * kRows;
          micro_kernel(depth, ap.data() + (t * k_dim + k0) * kRows, bp + k0 * kCols,
                       y + m0 * n_cols + j0, n_cols, std::min(kRows, mg - m0), cols,
                       bias != nullptr ? bias + m0 : nullptr, k0 > 0, k0 + depth == k_dim, lo,
                       hi);
        }
      }
    }
  });
}

}  // namespace instantid::onnx
