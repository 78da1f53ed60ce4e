#include "instantid/face/draw.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "instantid/error.hpp"

namespace instantid::face {

namespace {

// sin(i degrees) for i in 0..450 as OpenCV's drawing code tabulates it: 7 decimals, as float.
const float kSinTable[451] = {
    0.0000000f, 0.0174524f, 0.0348995f, 0.0523360f, 0.0697565f, 0.0871557f, 0.1045285f, 0.1218693f,
    0.1391731f, 0.1564345f, 0.1736482f, 0.1908090f, 0.2079117f, 0.2249511f, 0.2419219f, 0.2588190f,
    0.2756374f, 0.2923717f, 0.3090170f, 0.3255682f, 0.3420201f, 0.3583679f, 0.3746066f, 0.3907311f,
    0.4067366f, 0.4226183f, 0.4383711f, 0.4539905f, 0.4694716f, 0.4848096f, 0.5000000f, 0.5150381f,
    0.5299193f, 0.5446390f, 0.5591929f, 0.5735764f, 0.5877853f, 0.6018150f, 0.6156615f, 0.6293204f,
    0.6427876f, 0.6560590f, 0.6691306f, 0.6819984f, 0.6946584f, 0.7071068f, 0.7193398f, 0.7313537f,
    0.7431448f, 0.7547096f, 0.7660444f, 0.7771460f, 0.7880108f, 0.7986355f, 0.8090170f, 0.8191520f,
    0.8290376f, 0.8386706f, 0.8480481f, 0.8571673f, 0.8660254f, 0.8746197f, 0.8829476f, 0.8910065f,
    0.8987940f, 0.9063078f, 0.9135455f, 0.9205049f, 0.9271839f, 0.9335804f, 0.9396926f, 0.9455186f,
    0.9510565f, 0.9563048f, 0.9612617f, 0.9659258f, 0.9702957f, 0.9743701f, 0.9781476f, 0.9816272f,
    0.9848078f, 0.9876883f, 0.9902681f, 0.9925462f, 0.9945219f, 0.9961947f, 0.9975641f, 0.9986295f,
    0.9993908f, 0.9998477f, 1.0000000f, 0.9998477f, 0.9993908f, 0.9986295f, 0.9975641f, 0.9961947f,
    0.9945219f, 0.9925462f, 0.9902681f, 0.9876883f, 0.9848078f, 0.9816272f, 0.9781476f, 0.9743701f,
    0.9702957f, 0.9659258f, 0.9612617f, 0.9563048f, 0.9510565f, 0.9455186f, 0.9396926f, 0.9335804f,
    0.9271839f, 0.9205049f, 0.9135455f, 0.9063078f, 0.8987940f, 0.8910065f, 0.8829476f, 0.8746197f,
    0.8660254f, 0.8571673f, 0.8480481f, 0.8386706f, 0.8290376f, 0.8191520f, 0.8090170f, 0.7986355f,
    0.7880108f, 0.7771460f, 0.7660444f, 0.7547096f, 0.7431448f, 0.7313537f, 0.7193398f, 0.7071068f,
    0.6946584f, 0.6819984f, 0.6691306f, 0.6560590f, 0.6427876f, 0.6293204f, 0.6156615f, 0.6018150f,
    0.5877853f, 0.5735764f, 0.5591929f, 0.5446390f, 0.5299193f, 0.5150381f, 0.5000000f, 0.4848096f,
    0.4694716f, 0.4539905f, 0.4383711f, 0.4226183f, 0.4067366f, 0.3907311f, 0.3746066f, 0.3583679f,
    0.3420201f, 0.3255682f, 0.3090170f, 0.2923717f, 0.2756374f, 0.2588190f, 0.2419219f, 0.2249511f,
    0.2079117f, 0.1908090f, 0.1736482f, 0.1564345f, 0.1391731f, 0.1218693f, 0.1045285f, 0.0871557f,
    0.0697565f, 0.0523360f, 0.0348995f, 0.0174524f, 0.0000000f, -0.0174524f, -0.0348995f, -0.0523360f,
    -0.0697565f, -0.0871557f, -0.1045285f, -0.1218693f, -0.1391731f, -0.1564345f, -0.1736482f, -0.1908090f,
    -0.2079117f, -0.2249511f, -0.2419219f, -0.2588190f, -0.2756374f, -0.2923717f, -0.3090170f, -0.3255682f,
    -0.3420201f, -0.3583679f, -0.3746066f, -0.3907311f, -0.4067366f, -0.4226183f, -0.4383711f, -0.4539905f,
    -0.4694716f, -0.4848096f, -0.5000000f, -0.5150381f, -0.5299193f, -0.5446390f, -0.5591929f, -0.5735764f,
    -0.5877853f, -0.6018150f, -0.6156615f, -0.6293204f, -0.6427876f, -0.6560590f, -0.6691306f, -0.6819984f,
    -0.6946584f, -0.7071068f, -0.7193398f, -0.7313537f, -0.7431448f, -0.7547096f, -0.7660444f, -0.7771460f,
    -0.7880108f, -0.7986355f, -0.8090170f, -0.8191520f, -0.8290376f, -0.8386706f, -0.8480481f, -0.8571673f,
    -0.8660254f, -0.8746197f, -0.8829476f, -0.8910065f, -0.8987940f, -0.9063078f, -0.9135455f, -0.9205049f,
    -0.9271839f, -0.9335804f, -0.9396926f, -0.9455186f, -0.9510565f, -0.9563048f, -0.9612617f, -0.9659258f,
    -0.9702957f, -0.9743701f, -0.9781476f, -0.9816272f, -0.9848078f, -0.9876883f, -0.9902681f, -0.9925462f,
    -0.9945219f, -0.9961947f, -0.9975641f, -0.9986295f, -0.9993908f, -0.9998477f, -1.0000000f, -0.9998477f,
    -0.9993908f, -0.9986295f, -0.9975641f, -0.9961947f, -0.9945219f, -0.9925462f, -0.9902681f, -0.9876883f,
    -0.9848078f, -0.9816272f, -0.9781476f, -0.9743701f, -0.9702957f, -0.9659258f, -0.9612617f, -0.9563048f,
    -0.9510565f, -0.9455186f, -0.9396926f, -0.9335804f, -0.9271839f, -0.9205049f, -0.9135455f, -0.9063078f,
    -0.8987940f, -0.8910065f, -0.8829476f, -0.8746197f, -0.8660254f, -0.8571673f, -0.8480481f, -0.8386706f,
    -0.8290376f, -0.8191520f, -0.8090170f, -0.7986355f, -0.7880108f, -0.7771460f, -0.7660444f, -0.7547096f,
    -0.7431448f, -0.7313537f, -0.7193398f, -0.7071068f, -0.6946584f, -0.6819984f, -0.6691306f, -0.6560590f,
    -0.6427876f, -0.6293204f, -0.6156615f, -0.6018150f, -0.5877853f, -0.5735764f, -0.5591929f, -0.5446390f,
    -0.5299193f, -0.5150381f, -0.5000000f, -0.4848096f, -0.4694716f, -0.4539905f, -0.4383711f, -0.4226183f,
    -0.4067366f, -0.3907311f, -0.3746066f, -0.3583679f, -0.3420201f, -0.3255682f, -0.3090170f, -0.2923717f,
    -0.2756374f, -0.2588190f, -0.2419219f, -0.2249511f, -0.2079117f, -0.1908090f, -0.1736482f, -0.1564345f,
    -0.1391731f, -0.1218693f, -0.1045285f, -0.0871557f, -0.0697565f, -0.0523360f, -0.0348995f, -0.0174524f,
    -0.0000000f, 0.0174524f, 0.0348995f, 0.0523360f, 0.0697565f, 0.0871557f, 0.1045285f, 0.1218693f,
    0.1391731f, 0.1564345f, 0.1736482f, 0.1908090f, 0.2079117f, 0.2249511f, 0.2419219f, 0.2588190f,
    0.2756374f, 0.2923717f, 0.3090170f, 0.3255682f, 0.3420201f, 0.3583679f, 0.3746066f, 0.3907311f,
    0.4067366f, 0.4226183f, 0.4383711f, 0.4539905f, 0.4694716f, 0.4848096f, 0.5000000f, 0.5150381f,
    0.5299193f, 0.5446390f, 0.5591929f, 0.5735764f, 0.5877853f, 0.6018150f, 0.6156615f, 0.6293204f,
    0.6427876f, 0.6560590f, 0.6691306f, 0.6819984f, 0.6946584f, 0.7071068f, 0.7193398f, 0.7313537f,
    0.7431448f, 0.7547096f, 0.7660444f, 0.7771460f, 0.7880108f, 0.7986355f, 0.8090170f, 0.8191520f,
    0.8290376f, 0.8386706f, 0.8480481f, 0.8571673f, 0.8660254f, 0.8746197f, 0.8829476f, 0.8910065f,
    0.8987940f, 0.9063078f, 0.9135455f, 0.9205049f, 0.9271839f, 0.9335804f, 0.9396926f, 0.9455186f,
    0.9510565f, 0.9563048f, 0.9612617f, 0.9659258f, 0.9702957f, 0.9743701f, 0.9781476f, 0.9816272f,
    0.9848078f, 0.9876883f, 0.9902681f, 0.9925462f, 0.9945219f, 0.9961947f, 0.9975641f, 0.9986295f,
    0.9993908f, 0.9998477f, 1.0000000f,
};

constexpr double kPi = 3.14159265358979323846;
constexpr int kXyShift = 16;
constexpr std::int64_t kXyOne = std::int64_t{1} << kXyShift;

void put_pixel(Image& image, int x, int y, const std::array<std::uint8_t, 3>& color) {
  std::uint8_t* p = image.row(y) + static_cast<std::size_t>(x) * 3;
  p[0] = color[0];
  p[1] = color[1];
  p[2] = color[2];
}

void hline(Image& image, int y, int x1, int x2, const std::array<std::uint8_t, 3>& color) {
  for (int x = x1; x <= x2; ++x) put_pixel(image, x, y, color);
}

// Cohen–Sutherland clip of a segment to [0, w-1] × [0, h-1] with OpenCV's integer steps;
// false when the segment misses the image.
bool clip_line(std::int64_t w, std::int64_t h, std::int64_t& x1, std::int64_t& y1,
               std::int64_t& x2, std::int64_t& y2) {
  const std::int64_t right = w - 1;
  const std::int64_t bottom = h - 1;
  if (w <= 0 || h <= 0) return false;
  auto code = [&](std::int64_t x, std::int64_t y) {
    return (x < 0 ? 1 : 0) + (x > right ? 2 : 0) + (y < 0 ? 4 : 0) + (y > bottom ? 8 : 0);
  };
  int c1 = code(x1, y1);
  int c2 = code(x2, y2);
  if ((c1 & c2) == 0 && (c1 | c2) != 0) {
    if (c1 & 12) {
      const std::int64_t a = c1 < 8 ? 0 : bottom;
      x1 += static_cast<std::int64_t>(static_cast<double>(a - y1) * static_cast<double>(x2 - x1) /
                                      static_cast<double>(y2 - y1));
      y1 = a;
      c1 = (x1 < 0 ? 1 : 0) + (x1 > right ? 2 : 0);
    }
    if (c2 & 12) {
      const std::int64_t a = c2 < 8 ? 0 : bottom;
      x2 += static_cast<std::int64_t>(static_cast<double>(a - y2) * static_cast<double>(x2 - x1) /
                                      static_cast<double>(y2 - y1));
      y2 = a;
      c2 = (x2 < 0 ? 1 : 0) + (x2 > right ? 2 : 0);
    }
    if ((c1 & c2) == 0 && (c1 | c2) != 0) {
      if (c1) {
        const std::int64_t a = c1 == 1 ? 0 : right;
        y1 += static_cast<std::int64_t>(static_cast<double>(a - x1) * static_cast<double>(y2 - y1) /
                                        static_cast<double>(x2 - x1));
        x1 = a;
        c1 = 0;
      }
      if (c2) {
        const std::int64_t a = c2 == 1 ? 0 : right;
        y2 += static_cast<std::int64_t>(static_cast<double>(a - x2) * static_cast<double>(y2 - y1) /
                                        static_cast<double>(x2 - x1));
        x2 = a;
        c2 = 0;
      }
    }
  }
  return (c1 | c2) == 0;
}

// An 8-connected Bresenham segment drawn left to right (OpenCV LineIterator semantics).
void line8(Image& image, int px1, int py1, int px2, int py2, const std::array<std::uint8_t, 3>& color) {
  std::int64_t x1 = px1, y1 = py1, x2 = px2, y2 = py2;
  const bool outside = x1 < 0 || x1 >= image.width || x2 < 0 || x2 >= image.width || y1 < 0 ||
                       y1 >= image.height || y2 < 0 || y2 >= image.height;
  if (outside && !clip_line(image.width, image.height, x1, y1, x2, y2)) return;
  std::int64_t dx = x2 - x1;
  std::int64_t dy = y2 - y1;
  if (dx < 0) {
    dx = -dx;
    dy = -dy;
    std::swap(x1, x2);
    std::swap(y1, y2);
  }
  int step_x = 1;
  int step_y = 1;
  if (dy < 0) {
    dy = -dy;
    step_y = -1;
  }
  const bool vertical = dy > dx;
  if (vertical) std::swap(dx, dy);
  // Major axis moves every step; the minor axis moves when err < 0.
  std::int64_t err = dx - (dy + dy);
  const std::int64_t plus = dx + dx;
  const std::int64_t minus = -(dy + dy);
  std::int64_t x = x1;
  std::int64_t y = y1;
  for (std::int64_t i = 0; i <= dx; ++i) {
    put_pixel(image, static_cast<int>(x), static_cast<int>(y), color);
    const bool diagonal = err < 0;
    err += minus + (diagonal ? plus : 0);
    if (vertical) {
      y += step_y;
      if (diagonal) x += step_x;
    } else {
      x += step_x;
      if (diagonal) y += step_y;
    }
  }
}

}  // namespace

std::vector<int> ellipse_polygon(int cx, int cy, int axis_x, int axis_y, int angle, int delta) {
  INSTANTID_CHECK(delta > 0 && delta <= 180, "ellipse_polygon: delta: got ", delta, ", expected 1..180");
  while (angle < 0) angle += 360;
  while (angle > 360) angle -= 360;
  const float alpha = kSinTable[450 - angle];  // cos
  const float beta = kSinTable[angle];         // sin
  std::vector<int> pts;
  int prev_x = 0;
  int prev_y = 0;
  bool have_prev = false;
  const int arc_end = 360;
  for (int i = 0; i < arc_end + delta; i += delta) {
    const int a = std::min(i, arc_end);
    const double x = static_cast<double>(axis_x) * kSinTable[450 - a];
    const double y = static_cast<double>(axis_y) * kSinTable[a];
    const double px = cx + x * alpha - y * beta;
    const double py = cy + x * beta + y * alpha;
    const int rx = static_cast<int>(std::lrint(px));
    const int ry = static_cast<int>(std::lrint(py));
    if (!have_prev || rx != prev_x || ry != prev_y) {
      pts.push_back(rx);
      pts.push_back(ry);
      prev_x = rx;
      prev_y = ry;
      have_prev = true;
    }
  }
  if (pts.size() == 2) pts = {cx, cy, cx, cy};
  return pts;
}

void fill_convex_poly(Image& image, const std::vector<int>& points,
                      const std::array<std::uint8_t, 3>& color) {
  INSTANTID_CHECK(image.channels == 3, "fill_convex_poly: channels: got ", image.channels, ", expected 3");
  INSTANTID_CHECK(points.size() % 2 == 0, "fill_convex_poly: points: got ", points.size(),
                  " coordinates, expected pairs");
  const int npts = static_cast<int>(points.size() / 2);
  if (npts == 0) return;
  auto px = [&](int i) { return static_cast<std::int64_t>(points[static_cast<std::size_t>(2 * i)]); };
  auto py = [&](int i) { return static_cast<std::int64_t>(points[static_cast<std::size_t>(2 * i + 1)]); };
  // Outline first, each edge from the previous vertex (starting with the last one).
  std::int64_t xmin = px(0), xmax = px(0), ymin = py(0), ymax = py(0);
  int imin = 0;
  int prev = npts - 1;
  for (int i = 0; i < npts; ++i) {
    if (py(i) < ymin) {
      ymin = py(i);
      imin = i;
    }
    ymax = std::max(ymax, py(i));
    xmax = std::max(xmax, px(i));
    xmin = std::min(xmin, px(i));
    line8(image, static_cast<int>(px(prev)), static_cast<int>(py(prev)), static_cast<int>(px(i)),
          static_cast<int>(py(i)), color);
    prev = i;
  }
  if (npts < 3 || xmax < 0 || ymax < 0 || xmin >= image.width || ymin >= image.height) return;
  ymax = std::min<std::int64_t>(ymax, image.height - 1);
  struct Edge {
    int idx;
    int di;
    std::int64_t x;
    std::int64_t dx;
    std::int64_t ye;
  };
  Edge edge[2] = {{imin, 1, -kXyOne, 0, ymin}, {imin, npts - 1, -kXyOne, 0, ymin}};
  int edges = npts;  // shared budget of vertices the two chains may still consume
  const std::int64_t half = kXyOne >> 1;
  std::int64_t y = ymin;
  do {
    for (Edge& e : edge) {
      if (y < e.ye) continue;
      int idx0 = e.idx;
      int idx = idx0 + e.di;
      if (idx >= npts) idx -= npts;
      while (edges-- > 0) {
        const std::int64_t ty = py(idx);
        if (ty > y) {
          const std::int64_t xs = px(idx0) * kXyOne;  // OpenCV shifts; * avoids UB for x < 0
          const std::int64_t xe = px(idx) * kXyOne;
          e.ye = ty;
          e.dx = ((xe - xs) * 2 + (ty - y)) / (2 * (ty - y));
          e.x = xs;
          e.idx = idx;
          break;
        }
        idx0 = idx;
        idx += e.di;
        if (idx >= npts) idx -= npts;
      }
    }
    if (edges < 0) break;
    if (y >= 0) {
      const int left = edge[0].x > edge[1].x ? 1 : 0;
      const int right = 1 - left;
      int x1 = static_cast<int>((edge[left].x + half) >> kXyShift);
      int x2 = static_cast<int>((edge[right].x + half) >> kXyShift);
      if (x2 >= 0 && x1 < image.width) {
        x1 = std::max(x1, 0);
        x2 = std::min(x2, image.width - 1);
        hline(image, static_cast<int>(y), x1, x2, color);
      }
    }
    edge[0].x += edge[0].dx;
    edge[1].x += edge[1].dx;
  } while (++y <= ymax);
}

void fill_circle(Image& image, int cx, int cy, int radius, const std::array<std::uint8_t, 3>& color) {
  INSTANTID_CHECK(image.channels == 3, "fill_circle: channels: got ", image.channels, ", expected 3");
  INSTANTID_CHECK(radius >= 0, "fill_circle: radius: got ", radius, ", expected >= 0");
  auto span = [&](int y, int x1, int x2) {
    if (y < 0 || y >= image.height || x2 < 0 || x1 >= image.width) return;
    hline(image, y, std::max(x1, 0), std::min(x2, image.width - 1), color);
  };
  // Midpoint circle: each step fills the four rows at ±dy and ±dx.
  int err = 0;
  int dx = radius;
  int dy = 0;
  int plus = 1;
  int minus = (radius << 1) - 1;
  while (dx >= dy) {
    span(cy - dy, cx - dx, cx + dx);
    span(cy + dy, cx - dx, cx + dx);
    span(cy - dx, cx - dy, cx + dy);
    span(cy + dx, cx - dy, cx + dy);
    ++dy;
    err += plus;
    plus += 2;
    if (err > 0) {
      err -= minus;
      --dx;
      minus -= 2;
    }
  }
}

Image draw_kps(int width, int height, const std::array<float, 10>& kps) {
  INSTANTID_CHECK(width > 0 && height > 0, "draw_kps: size: got ", width, "x", height,
                  ", expected positive");
  for (float v : kps) {
    INSTANTID_CHECK(std::isfinite(v), "draw_kps: keypoint: got a non-finite coordinate, expected finite");
  }
  static const std::array<std::uint8_t, 3> kColors[5] = {
      {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 0}, {255, 0, 255}};
  static const int kLimbs[4][2] = {{0, 2}, {1, 2}, {3, 2}, {4, 2}};
  constexpr int kStickWidth = 4;
  Image out(width, height, 3);
  for (const auto& limb : kLimbs) {
    const float x0 = kps[static_cast<std::size_t>(2 * limb[0])];
    const float y0 = kps[static_cast<std::size_t>(2 * limb[0] + 1)];
    const float x1 = kps[static_cast<std::size_t>(2 * limb[1])];
    const float y1 = kps[static_cast<std::size_t>(2 * limb[1] + 1)];
    // NumPy float32 arithmetic: length and means stay float32; atan2 runs in double.
    const float ddx = x0 - x1;
    const float ddy = y0 - y1;
    const float length = std::sqrt(ddx * ddx + ddy * ddy);
    const double angle = std::atan2(static_cast<double>(ddy), static_cast<double>(ddx)) * (180.0 / kPi);
    const float mean_x = (x0 + x1) / 2.0f;
    const float mean_y = (y0 + y1) / 2.0f;
    const std::vector<int> polygon = ellipse_polygon(
        static_cast<int>(mean_x), static_cast<int>(mean_y), static_cast<int>(length / 2.0f),
        kStickWidth, static_cast<int>(angle), 1);
    fill_convex_poly(out, polygon, kColors[limb[0]]);
  }
  for (std::uint8_t& v : out.pixels) v = static_cast<std::uint8_t>(static_cast<double>(v) * 0.6);
  for (int k = 0; k < 5; ++k) {
    fill_circle(out, static_cast<int>(kps[static_cast<std::size_t>(2 * k)]),
                static_cast<int>(kps[static_cast<std::size_t>(2 * k + 1)]), 10, kColors[k]);
  }
  return out;
}

}  // namespace instantid::face
