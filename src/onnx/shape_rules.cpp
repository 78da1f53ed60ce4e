#include "onnx/shape_rules.hpp"

#include <algorithm>
#include <cmath>

#include "instantid/error.hpp"

namespace instantid::onnx {

std::int64_t normalize_axis(const Node& node, std::int64_t axis, int rank, const char* what) {
  INSTANTID_CHECK(axis >= -rank && axis < rank, node.where(), ": ", what, " ", axis,
                  " is out of range for rank ", rank, ", expected ", -rank, "..", rank - 1);
  return axis < 0 ? axis + rank : axis;
}

namespace {

void spatial_attrs(const Node& node, std::int64_t* sh, std::int64_t* sw, std::int64_t* dh,
                   std::int64_t* dw, std::int64_t pads[4]) {
  const auto strides = node.attr_ints("strides", {1, 1});
  const auto dil = node.attr_ints("dilations", {1, 1});
  auto p = node.attr_ints("pads", {0, 0, 0, 0});
  if (node.attr_string("auto_pad", "NOTSET") == "VALID") p = {0, 0, 0, 0};
  *sh = strides[0];
  *sw = strides[1];
  *dh = dil[0];
  *dw = dil[1];
  for (std::size_t i = 0; i < 4; ++i) pads[i] = p[i];
}

}  // namespace

Conv2dGeometry conv_geometry(const Node& node, const Shape& x, const Shape& w) {
  INSTANTID_CHECK(x.size() == 4, node.where(), ": input X has shape ", shape_string(x),
                  ", expected rank 4 [N, C, H, W]");
  INSTANTID_CHECK(w.size() == 4, node.where(), ": weight W has shape ", shape_string(w),
                  ", expected rank 4 [M, C/group, KH, KW]");
  Conv2dGeometry g{};
  g.n = x[0];
  g.c = x[1];
  g.h = x[2];
  g.w = x[3];
  g.m = w[0];
  g.group = node.attr_int("group", 1);
  g.kh = w[2];
  g.kw = w[3];
  INSTANTID_CHECK(g.c == w[1] * g.group, node.where(), ": input channels: got ", g.c,
                  ", expected W.shape[1] * group = ", w[1] * g.group, " (W ", shape_string(w),
                  ", group ", g.group, ")");
  INSTANTID_CHECK(g.m % g.group == 0, node.where(), ": output channels ", g.m,
                  " are not divisible by group ", g.group);
  if (node.has("kernel_shape")) {
    const auto k = node.attr_ints("kernel_shape");
    INSTANTID_CHECK(k[0] == g.kh && k[1] == g.kw, node.where(), ": kernel_shape ",
                    shape_string(k), " does not match the weight shape ", shape_string(w));
  }
  std::int64_t pads[4];
  spatial_attrs(node, &g.sh, &g.sw, &g.dh, &g.dw, pads);
  g.pad_top = pads[0];
  g.pad_left = pads[1];
  g.pad_bottom = pads[2];
  g.pad_right = pads[3];
  const std::int64_t ekh = g.dh * (g.kh - 1) + 1;
  const std::int64_t ekw = g.dw * (g.kw - 1) + 1;
  const std::int64_t ph = g.h + g.pad_top + g.pad_bottom;
  const std::int64_t pw = g.w + g.pad_left + g.pad_right;
  INSTANTID_CHECK(ph >= ekh && pw >= ekw, node.where(), ": input ", shape_string(x),
                  " with pads is smaller than the ", g.kh, "x", g.kw, " kernel");
  g.oh = (ph - ekh) / g.sh + 1;
  g.ow = (pw - ekw) / g.sw + 1;
  return g;
}

Pool2dGeometry pool_geometry(const Node& node, const Shape& x) {
  INSTANTID_CHECK(x.size() == 4, node.where(), ": input X has shape ", shape_string(x),
                  ", expected rank 4 [N, C, H, W]");
  Pool2dGeometry g{};
  g.n = x[0];
  g.c = x[1];
  g.h = x[2];
  g.w = x[3];
  const auto k = node.attr_ints("kernel_shape");
  g.kh = k[0];
  g.kw = k[1];
  std::int64_t pads[4];
  spatial_attrs(node, &g.sh, &g.sw, &g.dh, &g.dw, pads);
  g.pad_top = pads[0];
  g.pad_left = pads[1];
  g.pad_bottom = pads[2];
  g.pad_right = pads[3];
  g.count_include_pad = node.attr_int("count_include_pad", 0) != 0;
  const bool ceil_mode = node.attr_int("ceil_mode", 0) != 0;
  auto out_size = [&](std::int64_t in, std::int64_t kernel, std::int64_t stride,
                      std::int64_t dil, std::int64_t pb, std::int64_t pe) {
    const std::int64_t span = in + pb + pe - (dil * (kernel - 1) + 1);
    INSTANTID_CHECK(span >= 0, node.where(), ": input ", shape_string(x),
                    " with pads is smaller than the kernel");
    std::int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
    // PyTorch / ONNX rule: the last window must start inside the input or the leading padding.
    if (ceil_mode && (out - 1) * stride >= in + pb) --out;
    return out;
  };
  g.oh = out_size(g.h, g.kh, g.sh, g.dh, g.pad_top, g.pad_bottom);
  g.ow = out_size(g.w, g.kw, g.sw, g.dw, g.pad_left, g.pad_right);
  return g;
}

Shape broadcast_shape(const Node& node, const Shape& a, const Shape& b) {
  const std::size_t rank = std::max(a.size(), b.size());
  INSTANTID_CHECK(rank <= static_cast<std::size_t>(kMaxRank), node.where(), ": rank ", rank,
                  " exceeds the limit of ", kMaxRank);
  Shape out(rank, 1);
  for (std::size_t i = 0; i < rank; ++i) {
    const std::int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const std::int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    INSTANTID_CHECK(da == db || da == 1 || db == 1, node.where(), ": shapes ", shape_string(a),
                    " and ", shape_string(b), " are not broadcastable");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

ResizePlan resize_plan(const Node& node, std::int64_t opset, const Shape& x, const Tensor* scales,
                       const Tensor* sizes) {
  ResizePlan plan;
  const std::size_t rank = x.size();
  if (node.op == Op::kUpsample && node.has("scales")) {
    plan.scales = node.attrs.at("scales").floats;
  } else if (scales != nullptr && scales->numel() > 0) {
    INSTANTID_CHECK(scales->type == ElemType::kFloat, node.where(),
                    ": scales must be float, got ", elem_type_name(scales->type));
    plan.scales = scales->f;
  }
  if (sizes != nullptr && sizes->numel() > 0) {
    INSTANTID_CHECK(plan.scales.empty(), node.where(),
                    ": both scales and sizes are given, expected exactly one");
    INSTANTID_CHECK(sizes->type == ElemType::kInt64, node.where(), ": sizes must be int64");
    INSTANTID_CHECK(static_cast<std::size_t>(sizes->numel()) == rank, node.where(), ": sizes has ",
                    sizes->numel(), " values, expected ", rank, " (input rank)");
    plan.out = sizes->i;
    for (std::size_t d = 0; d < rank; ++d) {
      INSTANTID_CHECK(plan.out[d] >= 0, node.where(), ": negative output size ", plan.out[d]);
      plan.scales.push_back(x[d] == 0 ? 1.0f
                                      : static_cast<float>(plan.out[d]) / static_cast<float>(x[d]));
    }
    return plan;
  }
  INSTANTID_CHECK(!plan.scales.empty(), node.where(), ": neither scales nor sizes given");
  INSTANTID_CHECK(plan.scales.size() == rank, node.where(), ": scales has ", plan.scales.size(),
                  " values, expected ", rank, " (input rank)");
  plan.out.resize(rank);
  for (std::size_t d = 0; d < rank; ++d) {
    INSTANTID_CHECK(plan.scales[d] > 0.0f && std::isfinite(plan.scales[d]), node.where(),
                    ": scale ", plan.scales[d], " must be finite and > 0");
    const double size = std::floor(static_cast<double>(x[d]) * static_cast<double>(plan.scales[d]));
    // Bounded before the cast (a float scale can reach 3e38); the element limit applies later.
    INSTANTID_CHECK(size <= static_cast<double>(kMaxTensorElements), node.where(), ": scale ",
                    plan.scales[d], " makes axis ", d, " ", size, " long, more than the limit of ",
                    kMaxTensorElements);
    plan.out[d] = static_cast<std::int64_t>(size);
  }
  (void)opset;
  return plan;
}

Shape reshape_shape(const Node& node, const Shape& x, const Tensor& shape) {
  INSTANTID_CHECK(shape.type == ElemType::kInt64, node.where(), ": shape input must be int64");
  Shape out = shape.i;
  std::int64_t known = 1;
  int infer = -1;
  std::int64_t total = 1;
  for (auto d : x) total *= d;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] == 0) {
      INSTANTID_CHECK(i < x.size(), node.where(), ": shape ", shape_string(shape.i),
                      " copies dim ", i, " (0) but the input ", shape_string(x), " has rank ",
                      x.size());
      out[i] = x[i];
    }
    if (out[i] == -1) {
      INSTANTID_CHECK(infer < 0, node.where(), ": shape ", shape_string(shape.i),
                      " has more than one -1");
      infer = static_cast<int>(i);
      continue;
    }
    INSTANTID_CHECK(out[i] >= 0, node.where(), ": invalid target shape ", shape_string(shape.i));
    INSTANTID_CHECK(!__builtin_mul_overflow(known, out[i], &known), node.where(),
                    ": target shape ", shape_string(shape.i), " has more elements than int64 holds");
  }
  if (infer >= 0) {
    INSTANTID_CHECK(known > 0 && total % known == 0, node.where(), ": cannot reshape ",
                    shape_string(x), " to ", shape_string(shape.i));
    out[static_cast<std::size_t>(infer)] = total / known;
    known *= out[static_cast<std::size_t>(infer)];
  }
  INSTANTID_CHECK(known == total, node.where(), ": cannot reshape ", shape_string(x), " (", total,
                  " elements) to ", shape_string(shape.i));
  return out;
}

Shape flatten_shape(const Node& node, const Shape& x) {
  const int rank = static_cast<int>(x.size());
  std::int64_t axis = node.attr_int("axis", 1);
  INSTANTID_CHECK(axis >= -rank && axis <= rank, node.where(), ": axis ", axis,
                  " out of range for rank ", rank);
  if (axis < 0) axis += rank;
  std::int64_t a = 1, b = 1;
  for (int i = 0; i < rank; ++i) (i < axis ? a : b) *= x[static_cast<std::size_t>(i)];
  return {a, b};
}

Shape unsqueeze_shape(const Node& node, const Shape& x, const std::vector<std::int64_t>& axes) {
  const int out_rank = static_cast<int>(x.size() + axes.size());
  std::vector<bool> is_new(static_cast<std::size_t>(out_rank), false);
  for (auto a : axes) {
    const auto k = static_cast<std::size_t>(normalize_axis(node, a, out_rank, "axis"));
    INSTANTID_CHECK(!is_new[k], node.where(), ": axis ", a, " given twice");
    is_new[k] = true;
  }
  Shape out;
  std::size_t j = 0;
  for (int i = 0; i < out_rank; ++i) out.push_back(is_new[static_cast<std::size_t>(i)] ? 1 : x[j++]);
  return out;
}

Shape squeeze_shape(const Node& node, const Shape& x, const std::vector<std::int64_t>& axes,
                    bool axes_given) {
  const int rank = static_cast<int>(x.size());
  std::vector<bool> drop(x.size(), false);
  if (!axes_given) {
    for (std::size_t i = 0; i < x.size(); ++i) drop[i] = x[i] == 1;
  }
  for (auto a : axes) {
    const auto k = static_cast<std::size_t>(normalize_axis(node, a, rank, "axis"));
    INSTANTID_CHECK(x[k] == 1, node.where(), ": cannot squeeze axis ", a, " of shape ",
                    shape_string(x), ", expected size 1");
    drop[k] = true;
  }
  Shape out;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!drop[i]) out.push_back(x[i]);
  }
  return out;
}

std::vector<std::int64_t> transpose_perm(const Node& node, int rank) {
  std::vector<std::int64_t> perm = node.attr_ints("perm");
  if (perm.empty()) {
    for (int i = rank - 1; i >= 0; --i) perm.push_back(i);
  }
  INSTANTID_CHECK(static_cast<int>(perm.size()) == rank, node.where(), ": perm ",
                  shape_string(perm), " has ", perm.size(), " entries, expected ", rank);
  std::vector<bool> seen(static_cast<std::size_t>(rank), false);
  for (auto& p : perm) {
    p = normalize_axis(node, p, rank, "perm entry");
    INSTANTID_CHECK(!seen[static_cast<std::size_t>(p)], node.where(), ": perm ",
                    shape_string(perm), " is not a permutation");
    seen[static_cast<std::size_t>(p)] = true;
  }
  return perm;
}

}  // namespace instantid::onnx
