#pragma once
// Image operations of the face pipeline, bit-exact with OpenCV 4.x on x86-64 (docs/face.md):
// cv2.resize INTER_LINEAR on uint8, cv2.warpAffine INTER_LINEAR + BORDER_CONSTANT 0 on uint8, and
// cv2.dnn.blobFromImage with swapRB.

#include <array>

#include "instantid/face/image.hpp"
#include "instantid/tensor.hpp"

namespace instantid::face {

// cv2.resize(src, (width, height)) with INTER_LINEAR: 11-bit fixed-point bilinear, and the
// INTER_AREA path OpenCV takes for an exact 2× downscale in both axes. Any channel count.
Image resize_linear(const Image& src, int width, int height);

// Row-major 2×3 affine matrix mapping source to destination pixels (as passed to cv2.warpAffine).
using Affine = std::array<double, 6>;

// cv2.warpAffine(src, m, (width, height)) with INTER_LINEAR, BORDER_CONSTANT and border value 0:
// OpenCV inverts m in double and samples with 1/32-pixel fixed-point weights.
Image warp_affine(const Image& src, const Affine& m, int width, int height);

// cv2.dnn.blobFromImage(img, scale, size=(W, H), mean=(m, m, m), swapRB=True) for a BGR image of
// that size: returns float32 [1, 3, H, W] RGB planes, value (float(p) - mean) * scale (float32).
HostTensor blob_from_image(const Image& bgr, float mean, float scale);

// The detector's letterbox (insightface RetinaFace.detect): the image resized, keeping its aspect
// ratio, into the top-left corner of a black input_w × input_h canvas.
struct Letterbox {
  int new_width = 0;
  int new_height = 0;
  double det_scale = 0.0;  // new_height / image height, used for both axes
};
Letterbox letterbox_size(int image_width, int image_height, int input_width, int input_height);
Image letterbox(const Image& bgr, int input_width, int input_height, Letterbox* geometry);

}  // namespace instantid::face
