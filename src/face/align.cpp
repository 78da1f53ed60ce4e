#include "instantid/face/align.hpp"

#include <Eigen/Dense>
#include <Eigen/SVD>

#include <cmath>
#include <limits>

#include "instantid/error.hpp"

namespace instantid::face {

const std::array<float, 10> kArcfaceTemplate = {38.2946f, 51.6963f, 73.5318f, 51.5014f, 56.0252f,
                                                71.7366f, 41.5493f, 92.3655f, 70.7299f, 92.2041f};

namespace {
constexpr int kPoints = 5;
}

Affine umeyama(const std::array<float, 10>& src, const std::array<float, 10>& dst) {
  for (int i = 0; i < 10; ++i) {
    INSTANTID_CHECK(std::isfinite(src[static_cast<std::size_t>(i)]) &&
                        std::isfinite(dst[static_cast<std::size_t>(i)]),
                    "umeyama: point coordinate ", i, ": got a non-finite value, expected finite");
  }
  // NumPy float32 axis-0 mean: sequential float32 sum of the rows, then / N in float32.
  float src_mean[2] = {0.f, 0.f};
  float dst_mean[2] = {0.f, 0.f};
  for (int i = 0; i < kPoints; ++i) {
    for (int c = 0; c < 2; ++c) {
      src_mean[c] += src[static_cast<std::size_t>(2 * i + c)];
      dst_mean[c] += dst[static_cast<std::size_t>(2 * i + c)];
    }
  }
  for (int c = 0; c < 2; ++c) {
    src_mean[c] /= static_cast<float>(kPoints);
    dst_mean[c] /= static_cast<float>(kPoints);
  }
  float sd[kPoints][2];
  float dd[kPoints][2];
  for (int i = 0; i < kPoints; ++i) {
    for (int c = 0; c < 2; ++c) {
      sd[i][c] = src[static_cast<std::size_t>(2 * i + c)] - src_mean[c];
      dd[i][c] = dst[static_cast<std::size_t>(2 * i + c)] - dst_mean[c];
    }
  }
  // A = dst_demean^T @ src_demean / N in float32. NumPy's matmul (OpenBLAS sgemm on x86-64 with
  // FMA) accumulates the 5 products with fused multiply-adds in order; replicating that makes A
  // bit-identical (checked against the goldens).
  Eigen::Matrix2f a;
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) {
      float acc = 0.f;
      for (int i = 0; i < kPoints; ++i) acc = std::fma(dd[i][r], sd[i][c], acc);
      a(r, c) = acc / static_cast<float>(kPoints);
    }
  }
  double d[2] = {1.0, 1.0};
  if (a.determinant() < 0.f) d[1] = -1.0;
  // skimage runs LAPACK sgesdd on the float32 A. The SVD in double rounded to float32 reproduces
  // its U, S, V on every golden set, where a float32 Jacobi SVD is a few ulps off.
  Eigen::JacobiSVD<Eigen::Matrix2d> svd(a.cast<double>(), Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::Matrix2d u = svd.matrixU().cast<float>().cast<double>();
  const Eigen::Matrix2d vh = svd.matrixV().transpose().cast<float>().cast<double>();
  const Eigen::Vector2f s = svd.singularValues().cast<float>();
  const double tol = static_cast<double>(s.maxCoeff()) * 2.0 * std::numeric_limits<double>::epsilon();
  const int rank = (static_cast<double>(s(0)) > tol ? 1 : 0) + (static_cast<double>(s(1)) > tol ? 1 : 0);
  Affine m;
  if (rank == 0) {
    m.fill(std::numeric_limits<double>::quiet_NaN());
    return m;
  }
  Eigen::Matrix2d t;
  if (rank == 1) {
    if (u.determinant() * vh.determinant() > 0) {
      t = u * vh;
    } else {
      t = u * Eigen::Vector2d(d[0], -1.0).asDiagonal() * vh;
    }
  } else {
    t = u * Eigen::Vector2d(d[0], d[1]).asDiagonal() * vh;
  }
  // src_demean.var(axis=0).sum(): float32 mean of squared deviations per column, float32 sum.
  float var[2];
  for (int c = 0; c < 2; ++c) {
    float mean = 0.f;
    for (int i = 0; i < kPoints; ++i) mean += sd[i][c];
    mean /= static_cast<float>(kPoints);
    float acc = 0.f;
    for (int i = 0; i < kPoints; ++i) {
      const float x = sd[i][c] - mean;
      acc += x * x;
    }
    var[c] = acc / static_cast<float>(kPoints);
  }
  const float inv_var = 1.0f / (var[0] + var[1]);  // NumPy 2: float32 scalar
  const double scale = static_cast<double>(inv_var) *
                       (static_cast<double>(s(0)) * d[0] + static_cast<double>(s(1)) * d[1]);
  const double tx = static_cast<double>(dst_mean[0]) -
                    scale * (t(0, 0) * src_mean[0] + t(0, 1) * src_mean[1]);
  const double ty = static_cast<double>(dst_mean[1]) -
                    scale * (t(1, 0) * src_mean[0] + t(1, 1) * src_mean[1]);
  m = {t(0, 0) * scale, t(0, 1) * scale, tx, t(1, 0) * scale, t(1, 1) * scale, ty};
  return m;
}

Affine estimate_norm(const std::array<float, 10>& kps, int image_size) {
  INSTANTID_CHECK(image_size > 0 && (image_size % 112 == 0 || image_size % 128 == 0),
                  "estimate_norm: image_size: got ", image_size,
                  ", expected a positive multiple of 112 or 128");
  float ratio;
  float diff_x;
  if (image_size % 112 == 0) {
    ratio = static_cast<float>(image_size / 112.0);
    diff_x = 0.f;
  } else {
    ratio = static_cast<float>(image_size / 128.0);
    diff_x = 8.0f * ratio;
  }
  std::array<float, 10> dst{};
  for (std::size_t i = 0; i < 10; ++i) {
    dst[i] = kArcfaceTemplate[i] * ratio;
    if (i % 2 == 0) dst[i] += diff_x;
  }
  return umeyama(kps, dst);
}

Image norm_crop(const Image& bgr, const std::array<float, 10>& kps, int image_size) {
  const Affine m = estimate_norm(kps, image_size);
  for (double v : m) {
    INSTANTID_CHECK(std::isfinite(v), "norm_crop: the keypoints are degenerate (all equal): "
                                      "got no alignment, expected 5 distinct points");
  }
  return warp_affine(bgr, m, image_size, image_size);
}

}  // namespace instantid::face
