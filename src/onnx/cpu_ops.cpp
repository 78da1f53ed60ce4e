#include "onnx/cpu_ops.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "instantid/error.hpp"
#include "onnx/cpu_conv_avx2.hpp"
#include "onnx/cpu_parallel.hpp"
#include "onnx/shape_rules.hpp"

namespace instantid::onnx {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;

constexpr std::int64_t kElementwiseChunk = 1 << 16;

std::int64_t count(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

const Tensor& need(const Node& node, const std::vector<const Tensor*>& in, std::size_t k,
                   const char* what) {
  INSTANTID_CHECK(k < in.size() && in[k] != nullptr, node.where(), ": missing required input ",
                  what);
  return *in[k];
}

const Tensor& need_float(const Node& node, const std::vector<const Tensor*>& in, std::size_t k,
                         const char* what) {
  const Tensor& t = need(node, in, k, what);
  INSTANTID_CHECK(t.type == ElemType::kFloat, node.where(), ": input ", what, " has type ",
                  elem_type_name(t.type), ", expected float");
  return t;
}

const Tensor* optional(const std::vector<const Tensor*>& in, std::size_t k) {
  return k < in.size() ? in[k] : nullptr;
}

// ---- elementwise ----

template <typename T, typename F>
void broadcast_apply(const Shape& out, const Shape& as, const T* a, const Shape& bs, const T* b,
                     T* y, F f) {
  const std::int64_t n = count(out);
  const std::int64_t na = count(as), nb = count(bs);
  if (na == n && nb == n) {
    parallel_for(n, kElementwiseChunk, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] = f(a[i], b[i]);
    });
    return;
  }
  if (na == n && nb == 1) {
    const T bv = b[0];
    parallel_for(n, kElementwiseChunk, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] = f(a[i], bv);
    });
    return;
  }
  if (nb == n && na == 1) {
    const T av = a[0];
    for (std::int64_t i = 0; i < n; ++i) y[i] = f(av, b[i]);
    return;
  }
  const std::size_t rank = out.size();
  if (rank == 0 || rank > static_cast<std::size_t>(kMaxRank)) return;  // rank 0 took a fast path
  std::int64_t sa[kMaxRank] = {}, sb[kMaxRank] = {}, idx[kMaxRank] = {};
  std::int64_t stride_a = 1, stride_b = 1;
  for (std::size_t i = rank; i-- > 0;) {
    const std::size_t ia = i + as.size(), ib = i + bs.size();
    if (ia >= rank) {
      const std::int64_t d = as[ia - rank];
      sa[i] = d == 1 ? 0 : stride_a;
      stride_a *= d;
    }
    if (ib >= rank) {
      const std::int64_t d = bs[ib - rank];
      sb[i] = d == 1 ? 0 : stride_b;
      stride_b *= d;
    }
  }
  const std::int64_t inner = out[rank - 1];
  const std::int64_t ia_step = sa[rank - 1], ib_step = sb[rank - 1];
  std::int64_t oa = 0, ob = 0;
  for (std::int64_t base = 0; base < n; base += inner) {
    for (std::int64_t x = 0; x < inner; ++x) y[base + x] = f(a[oa + x * ia_step], b[ob + x * ib_step]);
    for (std::size_t d = rank - 1; d-- > 0;) {
      ++idx[d];
      oa += sa[d];
      ob += sb[d];
      if (idx[d] < out[d]) break;
      oa -= sa[d] * out[d];
      ob -= sb[d] * out[d];
      idx[d] = 0;
    }
  }
}

Tensor binary(const Node& node, const Tensor& a, const Tensor& b) {
  INSTANTID_CHECK(a.type == b.type, node.where(), ": input types differ (",
                  elem_type_name(a.type), " and ", elem_type_name(b.type), ")");
  const Shape out = broadcast_shape(node, a.shape, b.shape);
  if (a.type == ElemType::kFloat) {
    Tensor y = Tensor::floats(out);
    auto run = [&](auto f) { broadcast_apply(out, a.shape, a.f.data(), b.shape, b.f.data(), y.f.data(), f); };
    switch (node.op) {
      case Op::kAdd: run([](float p, float q) { return p + q; }); break;
      case Op::kSub: run([](float p, float q) { return p - q; }); break;
      case Op::kMul: run([](float p, float q) { return p * q; }); break;
      case Op::kDiv: run([](float p, float q) { return p / q; }); break;
      case Op::kPRelu: run([](float p, float q) { return p < 0.0f ? p * q : p; }); break;
      default: break;
    }
    return y;
  }
  INSTANTID_CHECK(node.op != Op::kPRelu, node.where(), ": int64 inputs are not supported");
  Tensor y = Tensor::ints(out);
  auto run = [&](auto f) { broadcast_apply(out, a.shape, a.i.data(), b.shape, b.i.data(), y.i.data(), f); };
  switch (node.op) {
    case Op::kAdd: run([](std::int64_t p, std::int64_t q) { return p + q; }); break;
    case Op::kSub: run([](std::int64_t p, std::int64_t q) { return p - q; }); break;
    case Op::kMul: run([](std::int64_t p, std::int64_t q) { return p * q; }); break;
    case Op::kDiv:
      for (auto q : b.i) INSTANTID_CHECK(q != 0, node.where(), ": integer division by zero");
      run([](std::int64_t p, std::int64_t q) { return p / q; });
      break;
    default: break;
  }
  return y;
}

// ---- convolution: im2col + Eigen GEMM, depthwise direct ----

void depthwise(const Conv2dGeometry& g, const float* x, const float* w, const float* bias,
               float* y) {
  // x [N, C, H, W]; w [C, 1, KH, KW]; y [N, C, OH, OW]. Tap by tap over an output row: the
  // columns whose input stays inside the row are a plain multiply-add over a (strided) run.
  parallel_for(g.n * g.c, 4, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t nc = b; nc < e; ++nc) {
      const std::int64_t c = nc % g.c;
      const float* xp = x + nc * g.h * g.w;
      const float* wp = w + c * g.kh * g.kw;
      float* yp = y + nc * g.oh * g.ow;
      const float bv = bias ? bias[c] : 0.0f;
      for (std::int64_t oy = 0; oy < g.oh; ++oy) {
        float* yrow = yp + oy * g.ow;
        std::fill(yrow, yrow + g.ow, bv);
        for (std::int64_t ky = 0; ky < g.kh; ++ky) {
          const std::int64_t iy = oy * g.sh - g.pad_top + ky * g.dh;
          if (iy < 0 || iy >= g.h) continue;
          const float* xrow = xp + iy * g.w;
          for (std::int64_t kx = 0; kx < g.kw; ++kx) {
            const float wv = wp[ky * g.kw + kx];
            const std::int64_t off = kx * g.dw - g.pad_left;  // ix = ox * sw + off
            const std::int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
            const std::int64_t hi =
                g.w - 1 - off < 0 ? 0 : std::min(g.ow, (g.w - 1 - off) / g.sw + 1);
            if (g.sw == 1) {
              const float* src = xrow + off;
              for (std::int64_t ox = lo; ox < hi; ++ox) yrow[ox] += wv * src[ox];
            } else {
              for (std::int64_t ox = lo; ox < hi; ++ox) yrow[ox] += wv * xrow[ox * g.sw + off];
            }
          }
        }
      }
    }
  });
}

Tensor conv(const Node& node, const Tensor& x, const Tensor& w, const Tensor* b,
            float lo = -std::numeric_limits<float>::infinity(),
            float hi = std::numeric_limits<float>::infinity()) {
  const bool clamp = lo > -std::numeric_limits<float>::infinity() ||
                     hi < std::numeric_limits<float>::infinity();
  auto clamp_all = [&](Tensor& t) {
    if (!clamp) return;
    float* p = t.f.data();
    parallel_for(t.numel(), kElementwiseChunk, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) p[i] = std::min(std::max(p[i], lo), hi);
    });
  };
  const Conv2dGeometry g = conv_geometry(node, x.shape, w.shape);
  if (b != nullptr) {
    INSTANTID_CHECK(b->type == ElemType::kFloat && b->numel() == g.m, node.where(),
                    ": bias B has shape ", shape_string(b->shape), ", expected [", g.m, "]");
  }
  Tensor y = Tensor::floats({g.n, g.m, g.oh, g.ow});
  const float* bias = b ? b->f.data() : nullptr;
  const std::int64_t cg = g.c / g.group, mg = g.m / g.group;
  if (cg == 1 && mg == 1) {
    depthwise(g, x.f.data(), w.f.data(), bias, y.f.data());
    clamp_all(y);
    return y;
  }
  const std::int64_t hw_out = g.oh * g.ow;
  const std::int64_t kdim = cg * g.kh * g.kw;
  if (cpu_has_avx2_fma()) {
    for (std::int64_t n = 0; n < g.n; ++n) {
      for (std::int64_t grp = 0; grp < g.group; ++grp) {
        conv2d_group_avx2(g, cg, mg, x.f.data() + (n * g.c + grp * cg) * g.h * g.w,
                          w.f.data() + grp * mg * kdim, bias ? bias + grp * mg : nullptr,
                          y.f.data() + (n * g.m + grp * mg) * hw_out, lo, hi);
      }
    }
    return y;
  }
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pad_top == 0 &&
                         g.pad_left == 0 && g.pad_bottom == 0 && g.pad_right == 0;
  std::vector<float> col(pointwise ? 0 : static_cast<std::size_t>(kdim * hw_out));
  for (std::int64_t n = 0; n < g.n; ++n) {
    for (std::int64_t grp = 0; grp < g.group; ++grp) {
      const float* xg = x.f.data() + (n * g.c + grp * cg) * g.h * g.w;
      const float* cols = xg;
      if (!pointwise) {
        // col [cg*KH*KW, OH*OW], row-major
        parallel_for(kdim, 8, [&](std::int64_t rb, std::int64_t re) {
          for (std::int64_t r = rb; r < re; ++r) {
            const std::int64_t c = r / (g.kh * g.kw);
            const std::int64_t ky = (r / g.kw) % g.kh, kx = r % g.kw;
            const float* xc = xg + c * g.h * g.w;
            float* dst = col.data() + r * hw_out;
            for (std::int64_t oy = 0; oy < g.oh; ++oy) {
              const std::int64_t iy = oy * g.sh - g.pad_top + ky * g.dh;
              float* row = dst + oy * g.ow;
              if (iy < 0 || iy >= g.h) {
                std::fill(row, row + g.ow, 0.0f);
                continue;
              }
              const float* src = xc + iy * g.w;
              for (std::int64_t ox = 0; ox < g.ow; ++ox) {
                const std::int64_t ix = ox * g.sw - g.pad_left + kx * g.dw;
                row[ox] = (ix >= 0 && ix < g.w) ? src[ix] : 0.0f;
              }
            }
          }
        });
        cols = col.data();
      }
      const float* wg = w.f.data() + grp * mg * kdim;
      float* yg = y.f.data() + (n * g.m + grp * mg) * hw_out;
      parallel_for(hw_out, 256, [&](std::int64_t jb, std::int64_t je) {
        Eigen::Map<const RowMatrix> wm(wg, mg, kdim);
        ConstStridedMap cm(cols + jb, kdim, je - jb, Eigen::OuterStride<>(hw_out));
        StridedMap ym(yg + jb, mg, je - jb, Eigen::OuterStride<>(hw_out));
        ym.noalias() = wm * cm;
        if (bias != nullptr) {
          for (std::int64_t m = 0; m < mg; ++m) {
            const float bv = bias[grp * mg + m];
            float* row = yg + m * hw_out;
            for (std::int64_t j = jb; j < je; ++j) row[j] += bv;
          }
        }
      });
    }
  }
  clamp_all(y);
  return y;
}

Tensor pool(const Node& node, const Tensor& x) {
  const Pool2dGeometry g = pool_geometry(node, x.shape);
  Tensor y = Tensor::floats({g.n, g.c, g.oh, g.ow});
  const bool is_max = node.op == Op::kMaxPool;
  parallel_for(g.n * g.c, 4, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t nc = b; nc < e; ++nc) {
      const float* xp = x.f.data() + nc * g.h * g.w;
      float* yp = y.f.data() + nc * g.oh * g.ow;
      for (std::int64_t oy = 0; oy < g.oh; ++oy) {
        for (std::int64_t ox = 0; ox < g.ow; ++ox) {
          const std::int64_t y0 = oy * g.sh - g.pad_top, x0 = ox * g.sw - g.pad_left;
          float acc = is_max ? -std::numeric_limits<float>::infinity() : 0.0f;
          std::int64_t valid = 0;
          for (std::int64_t ky = 0; ky < g.kh; ++ky) {
            const std::int64_t iy = y0 + ky * g.dh;
            if (iy < 0 || iy >= g.h) continue;
            for (std::int64_t kx = 0; kx < g.kw; ++kx) {
              const std::int64_t ix = x0 + kx * g.dw;
              if (ix < 0 || ix >= g.w) continue;
              const float v = xp[iy * g.w + ix];
              acc = is_max ? std::max(acc, v) : acc + v;
              ++valid;
            }
          }
          if (!is_max) {
            std::int64_t divisor = valid;
            if (g.count_include_pad) {
              // Window clipped to the padded input (not to the ceil_mode overhang), like PyTorch.
              const std::int64_t ye = std::min(y0 + g.kh, g.h + g.pad_bottom);
              const std::int64_t xe = std::min(x0 + g.kw, g.w + g.pad_right);
              divisor = (ye - y0) * (xe - x0);
            }
            acc = divisor > 0 ? acc / static_cast<float>(divisor) : 0.0f;
          }
          yp[oy * g.ow + ox] = acc;
        }
      }
    }
  });
  return y;
}

Tensor global_average_pool(const Node& node, const Tensor& x) {
  INSTANTID_CHECK(x.rank() >= 3, node.where(), ": input has shape ", shape_string(x.shape),
                  ", expected rank >= 3 [N, C, ...]");
  Shape out = {x.shape[0], x.shape[1]};
  std::int64_t inner = 1;
  for (int d = 2; d < x.rank(); ++d) {
    out.push_back(1);
    inner *= x.shape[static_cast<std::size_t>(d)];
  }
  Tensor y = Tensor::floats(out);
  for (std::int64_t nc = 0; nc < x.shape[0] * x.shape[1]; ++nc) {
    double acc = 0.0;
    for (std::int64_t k = 0; k < inner; ++k) acc += x.f[static_cast<std::size_t>(nc * inner + k)];
    y.f[static_cast<std::size_t>(nc)] = static_cast<float>(acc / static_cast<double>(inner));
  }
  return y;
}

Tensor batch_norm(const Node& node, const std::vector<const Tensor*>& in) {
  const Tensor& x = need_float(node, in, 0, "X");
  INSTANTID_CHECK(x.rank() >= 2, node.where(), ": input has shape ", shape_string(x.shape),
                  ", expected rank >= 2 [N, C, ...]");
  const std::int64_t c = x.shape[1];
  const char* names[] = {"X", "scale", "B", "mean", "var"};
  for (std::size_t k = 1; k < 5; ++k) {
    const Tensor& p = need_float(node, in, k, names[k]);
    INSTANTID_CHECK(p.numel() == c, node.where(), ": ", names[k], " has shape ",
                    shape_string(p.shape), ", expected [", c, "]");
  }
  const float eps = node.attr_float("epsilon", 1e-5f);
  const std::int64_t inner = count(x.shape) / std::max<std::int64_t>(1, x.shape[0] * c);
  Tensor y = Tensor::floats(x.shape);
  std::vector<float> a(static_cast<std::size_t>(c)), b(static_cast<std::size_t>(c));
  for (std::size_t k = 0; k < static_cast<std::size_t>(c); ++k) {
    a[k] = in[1]->f[k] / std::sqrt(in[4]->f[k] + eps);
    b[k] = in[2]->f[k] - in[3]->f[k] * a[k];
  }
  parallel_for(x.shape[0] * c, std::max<std::int64_t>(1, kElementwiseChunk / std::max<std::int64_t>(1, inner)),
               [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t nc = lo; nc < hi; ++nc) {
      const auto ch = static_cast<std::size_t>(nc % c);
      const float* src = x.f.data() + nc * inner;
      float* dst = y.f.data() + nc * inner;
      for (std::int64_t k = 0; k < inner; ++k) dst[k] = src[k] * a[ch] + b[ch];
    }
  });
  return y;
}

Tensor resize(const Node& node, std::int64_t opset, const std::vector<const Tensor*>& in) {
  const Tensor& x = need_float(node, in, 0, "X");
  const Tensor* scales = nullptr;
  const Tensor* sizes = nullptr;
  if (node.op == Op::kUpsample || opset < 11) {
    scales = optional(in, 1);
  } else {
    scales = optional(in, 2);
    sizes = optional(in, 3);
  }
  const ResizePlan plan = resize_plan(node, opset, x.shape, scales, sizes);
  INSTANTID_CHECK(x.rank() >= 1 && x.rank() <= 4, node.where(), ": input rank ", x.rank(),
                  " is not supported, expected 1..4");
  Shape in4(4 - x.shape.size(), 1), out4(4 - x.shape.size(), 1);
  std::vector<float> sc4(4 - x.shape.size(), 1.0f);
  in4.insert(in4.end(), x.shape.begin(), x.shape.end());
  out4.insert(out4.end(), plan.out.begin(), plan.out.end());
  sc4.insert(sc4.end(), plan.scales.begin(), plan.scales.end());
  // Allocated (and so checked against the element limit) before the per-axis maps, which would
  // otherwise be built for any axis length (fuzz_onnx: 1 GB of map for a refused output).
  Tensor y = Tensor::floats(plan.out);
  if (y.f.empty()) return y;
  std::vector<std::vector<std::int64_t>> map(4);
  for (std::size_t d = 0; d < 4; ++d) {
    for (std::int64_t o = 0; o < out4[d]; ++o) {
      // asymmetric + floor: x_in = floor(x_out / scale), in float like onnxruntime
      auto v = static_cast<std::int64_t>(std::floor(static_cast<float>(o) / sc4[d]));
      map[d].push_back(std::min(std::max<std::int64_t>(v, 0), in4[d] - 1));
    }
  }
  std::size_t k = 0;
  for (std::int64_t a = 0; a < out4[0]; ++a) {
    for (std::int64_t b = 0; b < out4[1]; ++b) {
      const std::int64_t base = (map[0][a] * in4[1] + map[1][b]) * in4[2];
      for (std::int64_t c = 0; c < out4[2]; ++c) {
        const float* row = x.f.data() + (base + map[2][c]) * in4[3];
        for (std::int64_t d = 0; d < out4[3]; ++d) y.f[k++] = row[map[3][d]];
      }
    }
  }
  return y;
}

Tensor transpose(const Node& node, const Tensor& x) {
  const int rank = x.rank();
  const auto perm = transpose_perm(node, rank);
  Shape out(static_cast<std::size_t>(rank));
  std::vector<std::int64_t> in_stride(static_cast<std::size_t>(rank)), step(static_cast<std::size_t>(rank));
  std::int64_t s = 1;
  for (int d = rank; d-- > 0;) {
    in_stride[static_cast<std::size_t>(d)] = s;
    s *= x.shape[static_cast<std::size_t>(d)];
  }
  for (std::size_t d = 0; d < out.size(); ++d) {
    out[d] = x.shape[static_cast<std::size_t>(perm[d])];
    step[d] = in_stride[static_cast<std::size_t>(perm[d])];
  }
  Tensor y = x.type == ElemType::kFloat ? Tensor::floats(out) : Tensor::ints(out);
  const std::int64_t n = count(out);
  if (n == 0) return y;
  if (rank == 0) {
    y.f = x.f;
    y.i = x.i;
    return y;
  }
  std::vector<std::int64_t> idx(static_cast<std::size_t>(rank), 0);
  std::int64_t off = 0;
  const std::int64_t inner = out.back(), inner_step = step.back();
  for (std::int64_t base = 0; base < n; base += inner) {
    if (x.type == ElemType::kFloat) {
      for (std::int64_t k = 0; k < inner; ++k) y.f[static_cast<std::size_t>(base + k)] = x.f[static_cast<std::size_t>(off + k * inner_step)];
    } else {
      for (std::int64_t k = 0; k < inner; ++k) y.i[static_cast<std::size_t>(base + k)] = x.i[static_cast<std::size_t>(off + k * inner_step)];
    }
    for (int d = rank - 1; d-- > 0;) {
      const auto du = static_cast<std::size_t>(d);
      ++idx[du];
      off += step[du];
      if (idx[du] < out[du]) break;
      off -= step[du] * out[du];
      idx[du] = 0;
    }
  }
  return y;
}

Tensor gather(const Node& node, const Tensor& data, const Tensor& indices) {
  INSTANTID_CHECK(indices.type == ElemType::kInt64, node.where(), ": indices must be integer");
  INSTANTID_CHECK(data.rank() >= 1, node.where(), ": data must have rank >= 1");
  const auto axis = static_cast<std::size_t>(
      normalize_axis(node, node.attr_int("axis", 0), data.rank(), "axis"));
  Shape out(data.shape.begin(), data.shape.begin() + static_cast<std::ptrdiff_t>(axis));
  out.insert(out.end(), indices.shape.begin(), indices.shape.end());
  out.insert(out.end(), data.shape.begin() + static_cast<std::ptrdiff_t>(axis) + 1, data.shape.end());
  std::int64_t outer = 1, inner = 1;
  for (std::size_t d = 0; d < axis; ++d) outer *= data.shape[d];
  for (std::size_t d = axis + 1; d < data.shape.size(); ++d) inner *= data.shape[d];
  const std::int64_t dim = data.shape[axis];
  Tensor y = data.type == ElemType::kFloat ? Tensor::floats(out) : Tensor::ints(out);
  const std::int64_t ni = indices.numel();
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::int64_t j = 0; j < ni; ++j) {
      std::int64_t idx = indices.i[static_cast<std::size_t>(j)];
      INSTANTID_CHECK(idx >= -dim && idx < dim, node.where(), ": index ", idx,
                      " out of range for axis of size ", dim);
      if (idx < 0) idx += dim;
      const auto src = static_cast<std::size_t>((o * dim + idx) * inner);
      const auto dst = static_cast<std::size_t>((o * ni + j) * inner);
      if (data.type == ElemType::kFloat) {
        std::copy_n(data.f.begin() + static_cast<std::ptrdiff_t>(src), inner, y.f.begin() + static_cast<std::ptrdiff_t>(dst));
      } else {
        std::copy_n(data.i.begin() + static_cast<std::ptrdiff_t>(src), inner, y.i.begin() + static_cast<std::ptrdiff_t>(dst));
      }
    }
  }
  return y;
}

Tensor slice(const Node& node, std::int64_t opset, const std::vector<const Tensor*>& in) {
  const Tensor& x = need(node, in, 0, "data");
  const int rank = x.rank();
  std::vector<std::int64_t> starts, ends, axes, steps;
  if (opset < 10) {
    starts = node.attr_ints("starts");
    ends = node.attr_ints("ends");
    axes = node.attr_ints("axes");
  } else {
    starts = as_int_list(node, need(node, in, 1, "starts"), "starts");
    ends = as_int_list(node, need(node, in, 2, "ends"), "ends");
    if (const Tensor* a = optional(in, 3)) axes = as_int_list(node, *a, "axes");
    if (const Tensor* s = optional(in, 4)) steps = as_int_list(node, *s, "steps");
  }
  INSTANTID_CHECK(starts.size() == ends.size(), node.where(), ": starts has ", starts.size(),
                  " values but ends has ", ends.size());
  if (axes.empty()) {
    for (std::size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<std::int64_t>(k));
  }
  if (steps.empty()) steps.assign(starts.size(), 1);
  INSTANTID_CHECK(axes.size() == starts.size() && steps.size() == starts.size(), node.where(),
                  ": starts/ends/axes/steps lengths differ");
  std::vector<std::int64_t> begin(static_cast<std::size_t>(rank), 0), step(static_cast<std::size_t>(rank), 1);
  Shape out = x.shape;
  for (std::size_t k = 0; k < starts.size(); ++k) {
    const auto a = static_cast<std::size_t>(normalize_axis(node, axes[k], rank, "axis"));
    const std::int64_t dim = x.shape[a];
    const std::int64_t st = steps[k];
    INSTANTID_CHECK(st != 0, node.where(), ": step must not be 0");
    std::int64_t s = starts[k], e = ends[k];
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (st > 0) {
      s = std::clamp<std::int64_t>(s, 0, dim);
      e = std::clamp<std::int64_t>(e, 0, dim);
      out[a] = e > s ? (e - s + st - 1) / st : 0;
    } else {
      s = std::clamp<std::int64_t>(s, 0, dim - 1);
      e = std::clamp<std::int64_t>(e, -1, dim - 1);
      out[a] = s > e ? (s - e - st - 1) / (-st) : 0;
    }
    begin[a] = s;
    step[a] = st;
  }
  Tensor y = x.type == ElemType::kFloat ? Tensor::floats(out) : Tensor::ints(out);
  const std::int64_t n = count(out);
  std::vector<std::int64_t> in_stride(static_cast<std::size_t>(rank));
  std::int64_t s = 1;
  for (int d = rank; d-- > 0;) {
    in_stride[static_cast<std::size_t>(d)] = s;
    s *= x.shape[static_cast<std::size_t>(d)];
  }
  std::vector<std::int64_t> idx(static_cast<std::size_t>(rank), 0);
  for (std::int64_t o = 0; o < n; ++o) {
    std::int64_t off = 0;
    for (std::size_t d = 0; d < idx.size(); ++d) off += (begin[d] + idx[d] * step[d]) * in_stride[d];
    if (x.type == ElemType::kFloat) {
      y.f[static_cast<std::size_t>(o)] = x.f[static_cast<std::size_t>(off)];
    } else {
      y.i[static_cast<std::size_t>(o)] = x.i[static_cast<std::size_t>(off)];
    }
    for (int d = rank; d-- > 0;) {
      const auto du = static_cast<std::size_t>(d);
      if (++idx[du] < out[du]) break;
      idx[du] = 0;
    }
  }
  return y;
}

Tensor concat(const Node& node, const std::vector<const Tensor*>& in) {
  const Tensor& first = need(node, in, 0, "0");
  const int rank = first.rank();
  const auto axis = static_cast<std::size_t>(
      normalize_axis(node, node.attr_int("axis", 0), rank, "axis"));
  Shape out = first.shape;
  out[axis] = 0;
  for (std::size_t k = 0; k < in.size(); ++k) {
    const Tensor& t = need(node, in, k, "input");
    INSTANTID_CHECK(t.type == first.type && t.rank() == rank, node.where(), ": input ", k,
                    " has type ", elem_type_name(t.type), " shape ", shape_string(t.shape),
                    ", expected type ", elem_type_name(first.type), " and rank ", rank);
    for (std::size_t d = 0; d < static_cast<std::size_t>(rank); ++d) {
      INSTANTID_CHECK(d == axis || t.shape[d] == first.shape[d], node.where(), ": input ", k,
                      " has shape ", shape_string(t.shape), ", expected ",
                      shape_string(first.shape), " except on axis ", axis);
    }
    out[axis] += t.shape[axis];
  }
  Tensor y = first.type == ElemType::kFloat ? Tensor::floats(out) : Tensor::ints(out);
  std::int64_t outer = 1, inner = 1;
  for (std::size_t d = 0; d < axis; ++d) outer *= out[d];
  for (std::size_t d = axis + 1; d < out.size(); ++d) inner *= out[d];
  std::int64_t offset = 0;
  for (const Tensor* t : in) {
    const std::int64_t block = t->shape[axis] * inner;
    for (std::int64_t o = 0; o < outer; ++o) {
      const auto dst = static_cast<std::ptrdiff_t>(o * out[axis] * inner + offset);
      const auto src = static_cast<std::ptrdiff_t>(o * block);
      if (t->type == ElemType::kFloat) {
        std::copy_n(t->f.begin() + src, block, y.f.begin() + dst);
      } else {
        std::copy_n(t->i.begin() + src, block, y.i.begin() + dst);
      }
    }
    offset += block;
  }
  return y;
}

Tensor gemm(const Node& node, const std::vector<const Tensor*>& in) {
  const Tensor& a = need_float(node, in, 0, "A");
  const Tensor& b = need_float(node, in, 1, "B");
  INSTANTID_CHECK(a.rank() == 2 && b.rank() == 2, node.where(), ": A ", shape_string(a.shape),
                  " and B ", shape_string(b.shape), " must both have rank 2");
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f), beta = node.attr_float("beta", 1.0f);
  const std::int64_t m = ta ? a.shape[1] : a.shape[0], k = ta ? a.shape[0] : a.shape[1];
  const std::int64_t kb = tb ? b.shape[1] : b.shape[0], n = tb ? b.shape[0] : b.shape[1];
  INSTANTID_CHECK(k == kb, node.where(), ": inner dimensions differ: A ", shape_string(a.shape),
                  (ta ? " (transposed)" : ""), ", B ", shape_string(b.shape),
                  (tb ? " (transposed)" : ""));
  Tensor y = Tensor::floats({m, n});
  Eigen::Map<RowMatrix> ym(y.f.data(), m, n);
  Eigen::Map<const RowMatrix> am(a.f.data(), a.shape[0], a.shape[1]);
  Eigen::Map<const RowMatrix> bm(b.f.data(), b.shape[0], b.shape[1]);
  if (ta && tb) {
    ym.noalias() = am.transpose() * bm.transpose();
  } else if (ta) {
    ym.noalias() = am.transpose() * bm;
  } else if (tb) {
    ym.noalias() = am * bm.transpose();
  } else {
    ym.noalias() = am * bm;
  }
  if (alpha != 1.0f) ym *= alpha;
  if (const Tensor* c = optional(in, 2)) {
    INSTANTID_CHECK(c->type == ElemType::kFloat, node.where(), ": C must be float");
    const Shape bs = broadcast_shape(node, {m, n}, c->shape);
    INSTANTID_CHECK(bs == Shape({m, n}), node.where(), ": C has shape ", shape_string(c->shape),
                    ", expected broadcastable to [", m, ", ", n, "]");
    Tensor scaled = *c;
    for (auto& v : scaled.f) v *= beta;
    Tensor sum = Tensor::floats({m, n});
    broadcast_apply(sum.shape, y.shape, y.f.data(), scaled.shape, scaled.f.data(), sum.f.data(),
                    [](float p, float q) { return p + q; });
    return sum;
  }
  return y;
}

Tensor matmul(const Node& node, const Tensor& a0, const Tensor& b0) {
  INSTANTID_CHECK(a0.type == ElemType::kFloat && b0.type == ElemType::kFloat, node.where(),
                  ": inputs must be float");
  INSTANTID_CHECK(a0.rank() >= 1 && b0.rank() >= 1, node.where(), ": inputs must have rank >= 1");
  Shape as = a0.shape, bs = b0.shape;
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const std::int64_t m = as[as.size() - 2], k = as.back();
  const std::int64_t kb = bs[bs.size() - 2], n = bs.back();
  INSTANTID_CHECK(k == kb, node.where(), ": inner dimensions differ: ", shape_string(a0.shape),
                  " x ", shape_string(b0.shape));
  const Shape a_batch(as.begin(), as.end() - 2), b_batch(bs.begin(), bs.end() - 2);
  const Shape batch = broadcast_shape(node, a_batch, b_batch);
  Shape out = batch;
  if (!a_vec) out.push_back(m);
  if (!b_vec) out.push_back(n);
  Tensor y = Tensor::floats(out);
  const std::int64_t nb = count(batch);
  // Batch index → offsets into a and b (broadcast dims repeat).
  std::vector<std::int64_t> ia(static_cast<std::size_t>(nb)), ib(static_cast<std::size_t>(nb));
  {
    Tensor ra = Tensor::ints(a_batch), rb = Tensor::ints(b_batch);
    for (std::size_t i = 0; i < ra.i.size(); ++i) ra.i[i] = static_cast<std::int64_t>(i);
    for (std::size_t i = 0; i < rb.i.size(); ++i) rb.i[i] = static_cast<std::int64_t>(i);
    Tensor one_a = Tensor::ints(b_batch, std::vector<std::int64_t>(static_cast<std::size_t>(count(b_batch)), 0));
    Tensor one_b = Tensor::ints(a_batch, std::vector<std::int64_t>(static_cast<std::size_t>(count(a_batch)), 0));
    broadcast_apply(batch, ra.shape, ra.i.data(), one_a.shape, one_a.i.data(), ia.data(),
                    [](std::int64_t p, std::int64_t) { return p; });
    broadcast_apply(batch, one_b.shape, one_b.i.data(), rb.shape, rb.i.data(), ib.data(),
                    [](std::int64_t, std::int64_t q) { return q; });
  }
  for (std::int64_t t = 0; t < nb; ++t) {
    Eigen::Map<const RowMatrix> am(a0.f.data() + ia[static_cast<std::size_t>(t)] * m * k, m, k);
    Eigen::Map<const RowMatrix> bm(b0.f.data() + ib[static_cast<std::size_t>(t)] * k * n, k, n);
    Eigen::Map<RowMatrix> ym(y.f.data() + t * m * n, m, n);
    ym.noalias() = am * bm;
  }
  return y;
}

Tensor constant(const Node& node) {
  const auto& [key, attr] = *node.attrs.begin();
  if (key == "value") return attr.t;
  if (key == "value_float") return Tensor::floats({}, {attr.f});
  if (key == "value_floats") {
    return Tensor::floats({static_cast<std::int64_t>(attr.floats.size())}, attr.floats);
  }
  if (key == "value_int") return Tensor::ints({}, {attr.i});
  return Tensor::ints({static_cast<std::int64_t>(attr.ints.size())}, attr.ints);
}

Tensor clip(const Node& node, std::int64_t opset, const std::vector<const Tensor*>& in,
            Tensor* reusable) {
  const Tensor& x = need_float(node, in, 0, "input");
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (opset < 11) {
    lo = node.attr_float("min", lo);
    hi = node.attr_float("max", hi);
  } else {
    if (const Tensor* t = optional(in, 1)) {
      INSTANTID_CHECK(t->type == ElemType::kFloat && t->numel() == 1, node.where(),
                      ": min must be a float scalar, got shape ", shape_string(t->shape));
      lo = t->f[0];
    }
    if (const Tensor* t = optional(in, 2)) {
      INSTANTID_CHECK(t->type == ElemType::kFloat && t->numel() == 1, node.where(),
                      ": max must be a float scalar, got shape ", shape_string(t->shape));
      hi = t->f[0];
    }
  }
  Tensor y = reusable != nullptr ? std::move(*reusable) : x;
  float* p = y.f.data();
  parallel_for(y.numel(), kElementwiseChunk, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) p[i] = std::min(std::max(p[i], lo), hi);
  });
  return y;
}

}  // namespace

bool activation_bounds(const Node& act, std::int64_t opset, const std::vector<const Tensor*>& in,
                       float* lo, float* hi) {
  *lo = -std::numeric_limits<float>::infinity();
  *hi = std::numeric_limits<float>::infinity();
  if (act.op == Op::kRelu) {
    *lo = 0.0f;
    return true;
  }
  if (act.op != Op::kClip) return false;
  if (opset < 11) {
    *lo = act.attr_float("min", *lo);
    *hi = act.attr_float("max", *hi);
    return true;
  }
  for (std::size_t k = 1; k < 3; ++k) {
    const Tensor* t = optional(in, k);
    if (t == nullptr) continue;
    if (t->type != ElemType::kFloat || t->numel() != 1) return false;
    (k == 1 ? *lo : *hi) = t->f[0];
  }
  return true;
}

Tensor run_cpu_conv_clamped(const Node& conv_node, const std::vector<const Tensor*>& in, float lo,
                            float hi) {
  return conv(conv_node, need_float(conv_node, in, 0, "X"), need_float(conv_node, in, 1, "W"),
              optional(in, 2), lo, hi);
}

std::vector<std::int64_t> as_int_list(const Node& node, const Tensor& t, const char* what) {
  INSTANTID_CHECK(t.rank() <= 1, node.where(), ": ", what, " must be a 1-D tensor, got shape ",
                  shape_string(t.shape));
  if (t.type == ElemType::kInt64) return t.i;
  std::vector<std::int64_t> out;
  for (float v : t.f) out.push_back(static_cast<std::int64_t>(v));
  return out;
}

std::vector<Tensor> run_cpu_node(const Node& node, std::int64_t opset,
                                 const std::vector<const Tensor*>& in, Tensor* reusable) {
  std::vector<Tensor> out(node.outputs.size());
  Tensor& y = out[0];
  // in[0] itself when it may be consumed, else a copy.
  auto take_input = [&](const Tensor& x) -> Tensor {
    if (reusable != nullptr) return std::move(*reusable);
    return x;
  };
  switch (node.op) {
    case Op::kConv:
      y = conv(node, need_float(node, in, 0, "X"), need_float(node, in, 1, "W"), optional(in, 2));
      break;
    case Op::kBatchNorm: y = batch_norm(node, in); break;
    case Op::kPRelu: {
      const Tensor& x = need_float(node, in, 0, "X");
      const Tensor& slope = need_float(node, in, 1, "slope");
      y = binary(node, x, slope);
      INSTANTID_CHECK(y.shape == x.shape, node.where(), ": slope ", shape_string(slope.shape),
                      " must broadcast to the input ", shape_string(x.shape));
      break;
    }
    case Op::kRelu: {
      y = take_input(need_float(node, in, 0, "X"));
      float* p = y.f.data();
      parallel_for(y.numel(), kElementwiseChunk, [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t i = lo; i < hi; ++i) p[i] = std::max(p[i], 0.0f);
      });
      break;
    }
    case Op::kSigmoid:
      y = take_input(need_float(node, in, 0, "X"));
      for (auto& v : y.f) v = 1.0f / (1.0f + std::exp(-v));
      break;
    case Op::kClip: y = clip(node, opset, in, reusable); break;
    case Op::kAdd:
    case Op::kSub:
    case Op::kMul:
    case Op::kDiv: y = binary(node, need(node, in, 0, "A"), need(node, in, 1, "B")); break;
    case Op::kMaxPool:
    case Op::kAveragePool: y = pool(node, need_float(node, in, 0, "X")); break;
    case Op::kGlobalAveragePool: y = global_average_pool(node, need_float(node, in, 0, "X")); break;
    case Op::kResize:
    case Op::kUpsample: y = resize(node, opset, in); break;
    case Op::kShape: {
      const Tensor& x = need(node, in, 0, "data");
      const std::int64_t rank = x.rank();
      std::int64_t start = node.attr_int("start", 0), end = node.attr_int("end", rank);
      if (start < 0) start += rank;
      if (end < 0) end += rank;
      start = std::clamp<std::int64_t>(start, 0, rank);
      end = std::clamp<std::int64_t>(end, start, rank);
      y = Tensor::ints({end - start}, Shape(x.shape.begin() + start, x.shape.begin() + end));
      break;
    }
    case Op::kGather: y = gather(node, need(node, in, 0, "data"), need(node, in, 1, "indices")); break;
    case Op::kUnsqueeze: {
      const Tensor& x = need(node, in, 0, "data");
      const auto axes = node.has("axes") ? node.attr_ints("axes")
                                         : as_int_list(node, need(node, in, 1, "axes"), "axes");
      Shape s = unsqueeze_shape(node, x.shape, axes);
      y = take_input(x);
      y.shape = std::move(s);
      break;
    }
    case Op::kSqueeze: {
      const Tensor& x = need(node, in, 0, "data");
      const Tensor* axes_in = optional(in, 1);
      const bool given = node.has("axes") || axes_in != nullptr;
      const auto axes = node.has("axes") ? node.attr_ints("axes")
                        : axes_in        ? as_int_list(node, *axes_in, "axes")
                                         : std::vector<std::int64_t>{};
      Shape s = squeeze_shape(node, x.shape, axes, given);
      y = take_input(x);
      y.shape = std::move(s);
      break;
    }
    case Op::kSlice: y = slice(node, opset, in); break;
    case Op::kConcat: y = concat(node, in); break;
    case Op::kReshape: {
      const Tensor& x = need(node, in, 0, "data");
      Shape s = reshape_shape(node, x.shape, need(node, in, 1, "shape"));
      y = take_input(x);
      y.shape = std::move(s);
      break;
    }
    case Op::kTranspose: y = transpose(node, need(node, in, 0, "data")); break;
    case Op::kFlatten: {
      const Tensor& x = need(node, in, 0, "input");
      Shape s = flatten_shape(node, x.shape);
      y = take_input(x);
      y.shape = std::move(s);
      break;
    }
    case Op::kGemm: y = gemm(node, in); break;
    case Op::kMatMul: y = matmul(node, need(node, in, 0, "A"), need(node, in, 1, "B")); break;
    case Op::kConstant: y = constant(node); break;
    case Op::kIdentity:
    case Op::kDropout: y = take_input(need(node, in, 0, "input")); break;
  }
  return out;
}

}  // namespace instantid::onnx
