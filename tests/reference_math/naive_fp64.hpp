#pragma once
// Independent float64 implementations of the spec's math with plain loops, for checks at real
// SDXL shapes where no PyTorch golden is committed.

#include <cmath>
#include <string>
#include <vector>

#include "instantid/model.hpp"

namespace instantid::test {

using Matrix64 = std::vector<std::vector<double>>;  // [rows][cols]

inline Matrix64 linear64(const Matrix64& x, const HostTensor& w, const HostTensor* b) {
  const std::int64_t out = w.size(0), in = w.size(1);
  Matrix64 y(x.size(), std::vector<double>(static_cast<std::size_t>(out)));
  for (std::size_t r = 0; r < x.size(); ++r) {
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b != nullptr ? b->data()[o] : 0.0;
      const float* wr = w.data() + o * in;
      for (std::int64_t i = 0; i < in; ++i) s += x[r][static_cast<std::size_t>(i)] * wr[i];
      y[r][static_cast<std::size_t>(o)] = s;
    }
  }
  return y;
}

inline Matrix64 layer_norm64(const Matrix64& x, const HostTensor& w, const HostTensor& b) {
  Matrix64 y = x;
  for (auto& row : y) {
    double mean = 0, var = 0;
    for (double v : row) mean += v;
    mean /= static_cast<double>(row.size());
    for (double v : row) var += (v - mean) * (v - mean);
    var /= static_cast<double>(row.size());
    for (std::size_t c = 0; c < row.size(); ++c)
      row[c] = (row[c] - mean) / std::sqrt(var + 1e-5) * w.data()[c] + b.data()[c];
  }
  return y;
}

// softmax(q kᵀ · scale) v for one head's columns [c0, c0 + dh).
inline std::vector<double> attend64(const std::vector<double>& q, const Matrix64& k,
                                    const Matrix64& v, std::size_t c0, std::size_t dh,
                                    double scale) {
  std::vector<double> s(k.size());
  double max = -1e300;
  for (std::size_t j = 0; j < k.size(); ++j) {
    double d = 0;
    for (std::size_t c = 0; c < dh; ++c) d += q[c0 + c] * k[j][c0 + c];
    s[j] = d * scale;
    max = std::max(max, s[j]);
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - max));
  std::vector<double> o(dh, 0.0);
  for (std::size_t j = 0; j < k.size(); ++j)
    for (std::size_t c = 0; c < dh; ++c) o[c] += s[j] / sum * v[j][c0 + c];
  return o;
}

// Spec §3 in float64: x [T, E] → [16, D_out].
inline Matrix64 resampler64(const InstantIDModel& model, const Matrix64& x_in) {
  const ModelLayout& l = model.layout();
  auto w = [&](const std::string& s) -> const HostTensor& { return model.image_proj(s); };
  Matrix64 latents(static_cast<std::size_t>(l.num_queries),
                   std::vector<double>(static_cast<std::size_t>(l.dim)));
  for (int i = 0; i < l.num_queries; ++i)
    for (int c = 0; c < l.dim; ++c)
      latents[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)] =
          w("latents").data()[i * l.dim + c];
  const Matrix64 x = linear64(x_in, w("proj_in.weight"), &w("proj_in.bias"));
  const auto dh = static_cast<std::size_t>(l.dim_head);
  const auto inner = static_cast<std::size_t>(l.heads) * dh;
  for (int i = 0; i < l.depth; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const Matrix64 xn = layer_norm64(x, w(p + "0.norm1.weight"), w(p + "0.norm1.bias"));
    const Matrix64 ln = layer_norm64(latents, w(p + "0.norm2.weight"), w(p + "0.norm2.bias"));
    const Matrix64 q = linear64(ln, w(p + "0.to_q.weight"), nullptr);
    Matrix64 kv_in = xn;
    kv_in.insert(kv_in.end(), ln.begin(), ln.end());
    const Matrix64 kv = linear64(kv_in, w(p + "0.to_kv.weight"), nullptr);
    Matrix64 k(kv.size()), v(kv.size());
    for (std::size_t r = 0; r < kv.size(); ++r) {
      k[r].assign(kv[r].begin(), kv[r].begin() + static_cast<std::ptrdiff_t>(inner));
      v[r].assign(kv[r].begin() + static_cast<std::ptrdiff_t>(inner), kv[r].end());
    }
    Matrix64 attn(q.size(), std::vector<double>(inner));
    for (std::size_t r = 0; r < q.size(); ++r) {
      for (int h = 0; h < l.heads; ++h) {
        const std::size_t c0 = static_cast<std::size_t>(h) * dh;
        const std::vector<double> o = attend64(q[r], k, v, c0, dh, 1.0 / std::sqrt(double(dh)));
        std::copy(o.begin(), o.end(), attn[r].begin() + static_cast<std::ptrdiff_t>(c0));
      }
    }
    const Matrix64 a = linear64(attn, w(p + "0.to_out.weight"), nullptr);
    for (std::size_t r = 0; r < latents.size(); ++r)
      for (std::size_t c = 0; c < latents[r].size(); ++c) latents[r][c] += a[r][c];
    Matrix64 f = linear64(layer_norm64(latents, w(p + "1.0.weight"), w(p + "1.0.bias")),
                          w(p + "1.1.weight"), nullptr);
    for (auto& row : f)
      for (double& x : row) x = 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    const Matrix64 g = linear64(f, w(p + "1.3.weight"), nullptr);
    for (std::size_t r = 0; r < latents.size(); ++r)
      for (std::size_t c = 0; c < latents[r].size(); ++c) latents[r][c] += g[r][c];
  }
  return layer_norm64(linear64(latents, w("proj_out.weight"), &w("proj_out.bias")),
                      w("norm_out.weight"), w("norm_out.bias"));
}

inline Matrix64 to_matrix64(const float* data, std::int64_t rows, std::int64_t cols) {
  Matrix64 m(static_cast<std::size_t>(rows), std::vector<double>(static_cast<std::size_t>(cols)));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = data[r * cols + c];
  return m;
}

inline double rel_l2_64(const float* got, const Matrix64& expected) {
  double num = 0, den = 0;
  std::size_t i = 0;
  for (const auto& row : expected)
    for (double e : row) {
      num += (got[i] - e) * (got[i] - e);
      den += e * e;
      ++i;
    }
  return std::sqrt(num / den);
}

}  // namespace instantid::test
