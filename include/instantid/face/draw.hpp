#pragma once
// The IdentityNet ControlNet image of ComfyUI_InstantID (utils.py draw_kps, spec §2.5): limbs from
// the eyes and mouth corners to the nose as filled ellipses at 60 % intensity, then a filled
// circle of radius 10 per keypoint. Rasterised like OpenCV 4.x (ellipse2Poly, fillConvexPoly,
// circle with LINE_8).

#include <array>
#include <vector>

#include "instantid/face/image.hpp"

namespace instantid::face {

// Returns an RGB (not BGR) width × height image; kps are (x, y) × 5 in pixels.
Image draw_kps(int width, int height, const std::array<float, 10>& kps);

// cv2.ellipse2Poly with integer centre/axes/angle and arc 0..360 in steps of `delta` degrees:
// the rounded points with consecutive duplicates removed. Returned as x0, y0, x1, y1, ...
std::vector<int> ellipse_polygon(int cx, int cy, int axis_x, int axis_y, int angle, int delta);

// cv2.fillConvexPoly(img, pts, color) with LINE_8 and shift 0 (edges drawn, then scanlines).
void fill_convex_poly(Image& image, const std::vector<int>& points, const std::array<std::uint8_t, 3>& color);

// cv2.circle(img, centre, radius, color, thickness=-1) with LINE_8.
void fill_circle(Image& image, int cx, int cy, int radius, const std::array<std::uint8_t, 3>& color);

}  // namespace instantid::face
