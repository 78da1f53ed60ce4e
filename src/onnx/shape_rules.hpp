#pragma once
// Output-shape rules shared by the CPU and CUDA backends: both compute shapes from the actual
// inputs at run time with exactly these functions, so they cannot disagree.

#include <cstdint>
#include <vector>

#include "onnx/graph.hpp"

namespace instantid::onnx {

using Shape = std::vector<std::int64_t>;

struct Conv2dGeometry {
  std::int64_t n, c, h, w;         // input  [N, C, H, W]
  std::int64_t m, group;           // weight [M, C/group, KH, KW]
  std::int64_t kh, kw, sh, sw, dh, dw;
  std::int64_t pad_top, pad_left, pad_bottom, pad_right;
  std::int64_t oh, ow;             // output [N, M, OH, OW]
};
Conv2dGeometry conv_geometry(const Node& node, const Shape& x, const Shape& w);

struct Pool2dGeometry {
  std::int64_t n, c, h, w;
  std::int64_t kh, kw, sh, sw, dh, dw;
  std::int64_t pad_top, pad_left, pad_bottom, pad_right;
  std::int64_t oh, ow;
  bool count_include_pad;
};
Pool2dGeometry pool_geometry(const Node& node, const Shape& x);

// Numpy (multidirectional) broadcasting; throws naming the node on incompatible shapes.
Shape broadcast_shape(const Node& node, const Shape& a, const Shape& b);

// Resize / Upsample: output shape and the per-axis scale used for the nearest coordinate map
// (x_in = floor(x_out / scale), clamped). scales and sizes are host tensors or null.
struct ResizePlan {
  Shape out;
  std::vector<float> scales;
};
ResizePlan resize_plan(const Node& node, std::int64_t opset, const Shape& x, const Tensor* scales,
                       const Tensor* sizes);

// Reshape target with 0 (copy) and -1 (infer).
Shape reshape_shape(const Node& node, const Shape& x, const Tensor& shape);
Shape flatten_shape(const Node& node, const Shape& x);
Shape unsqueeze_shape(const Node& node, const Shape& x, const std::vector<std::int64_t>& axes);
Shape squeeze_shape(const Node& node, const Shape& x, const std::vector<std::int64_t>& axes,
                    bool axes_given);
std::vector<std::int64_t> transpose_perm(const Node& node, int rank);
std::int64_t normalize_axis(const Node& node, std::int64_t axis, int rank, const char* what);

}  // namespace instantid::onnx
