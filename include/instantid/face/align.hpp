#pragma once
// 5-point face alignment (insightface utils/face_align.py, spec §6).

#include <array>

#include "instantid/face/image.hpp"
#include "instantid/face/imgproc.hpp"

namespace instantid::face {

// The ArcFace 112×112 template: left eye, right eye, nose, left mouth, right mouth.
extern const std::array<float, 10> kArcfaceTemplate;

// skimage SimilarityTransform.estimate (Umeyama with scaling) from 5 float32 points to 5 float32
// points, with skimage's float32 intermediates (means, covariance, SVD, variance) and a float64
// final matrix. Returns the row-major 2×3 matrix; NaN everywhere when the points are degenerate
// (rank 0), as skimage does.
Affine umeyama(const std::array<float, 10>& src, const std::array<float, 10>& dst);

// insightface estimate_norm: the similarity from `kps` to the template scaled to image_size
// (a multiple of 112 or 128).
Affine estimate_norm(const std::array<float, 10>& kps, int image_size = 112);

// insightface norm_crop: the aligned image_size × image_size crop of a BGR image.
Image norm_crop(const Image& bgr, const std::array<float, 10>& kps, int image_size = 112);

}  // namespace instantid::face
