// Spec §3: the Resampler (perceiver) of InstantID's image_proj, float32 with Eigen.

#include <cmath>
#include <string>

#include "eigen_maps.hpp"
#include "instantid/reference.hpp"

namespace instantid::ref {

namespace {

using detail::as_matrix;
using detail::RowMatrix;

constexpr float kLayerNormEps = 1e-5f;

// y = x · Wᵀ (+ b). x: [R, in], W: [out, in], b: [out].
RowMatrix linear(const RowMatrix& x, const HostTensor& weight, const HostTensor* bias) {
  RowMatrix y = x * as_matrix(weight).transpose();
  if (bias != nullptr) {
    y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias->data(), bias->numel());
  }
  return y;
}

// LayerNorm over the last dimension with biased variance, as torch.nn.LayerNorm.
RowMatrix layer_norm(const RowMatrix& x, const HostTensor& weight, const HostTensor& bias) {
  const Eigen::Index cols = x.cols();
  RowMatrix y(x.rows(), cols);
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float mean = x.row(r).sum() / static_cast<float>(cols);
    const float variance = (x.row(r).array() - mean).square().sum() / static_cast<float>(cols);
    const float inv = 1.0f / std::sqrt(variance + kLayerNormEps);
    for (Eigen::Index c = 0; c < cols; ++c) {
      y(r, c) = (x(r, c) - mean) * inv * weight.data()[c] + bias.data()[c];
    }
  }
  return y;
}

float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

// Row-wise softmax in float32, max-subtracted.
void softmax_rows(RowMatrix& s) {
  for (Eigen::Index r = 0; r < s.rows(); ++r) {
    const float max = s.row(r).maxCoeff();
    s.row(r) = (s.row(r).array() - max).exp();
    s.row(r) /= s.row(r).sum();
  }
}

}  // namespace

HostTensor resampler(const InstantIDModel& model, const HostTensor& x) {
  const ModelLayout& layout = model.layout();
  const int e = layout.embed_dim;
  const int dim = layout.dim;
  const int heads = layout.heads;
  const int dim_head = layout.dim_head;
  const int queries = layout.num_queries;
  const int d_out = model.output_dim();
  INSTANTID_CHECK(x.ndim() == 3 && x.size(2) == e && x.size(0) > 0 && x.size(1) > 0,
                  "resampler input: got ", x.shape_str(), ", expected [B, T, ", e, "]");
  const std::int64_t batch = x.size(0);
  const std::int64_t tokens = x.size(1);

  auto w = [&](const std::string& suffix) -> const HostTensor& { return model.image_proj(suffix); };
  const RowMatrix latents0 = as_matrix(w("latents"));  // [16, dim]
  const float scale = 1.0f / std::sqrt(std::sqrt(static_cast<float>(dim_head)));

  HostTensor out({batch, queries, d_out});
  for (std::int64_t b = 0; b < batch; ++b) {
    const RowMatrix xb = detail::ConstMatrixMap(x.data() + b * tokens * e, tokens, e);
    const RowMatrix h = linear(xb, w("proj_in.weight"), &w("proj_in.bias"));  // [T, dim]
    RowMatrix latents = latents0;                                             // [16, dim]
    for (int i = 0; i < layout.depth; ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      // PerceiverAttention
      const RowMatrix xn = layer_norm(h, w(p + "0.norm1.weight"), w(p + "0.norm1.bias"));
      const RowMatrix ln = layer_norm(latents, w(p + "0.norm2.weight"), w(p + "0.norm2.bias"));
      RowMatrix q = linear(ln, w(p + "0.to_q.weight"), nullptr);  // [16, heads·dh]
      RowMatrix kv_in(tokens + queries, dim);                     // [T + 16, dim]
      kv_in << xn, ln;
      RowMatrix kv = linear(kv_in, w(p + "0.to_kv.weight"), nullptr);  // [T + 16, 2·heads·dh]
      const Eigen::Index inner = static_cast<Eigen::Index>(heads) * dim_head;
      q *= scale;
      kv.leftCols(inner) *= scale;         // k = first half, v = second half
      RowMatrix attn_out(queries, inner);  // [16, heads·dh]
      for (int hd = 0; hd < heads; ++hd) {
        const Eigen::Index c0 = static_cast<Eigen::Index>(hd) * dim_head;
        RowMatrix s = q.middleCols(c0, dim_head) * kv.middleCols(c0, dim_head).transpose();
        softmax_rows(s);
        attn_out.middleCols(c0, dim_head) = s * kv.middleCols(inner + c0, dim_head);
      }
      latents += linear(attn_out, w(p + "0.to_out.weight"), nullptr);
      // FeedForward
      RowMatrix f = linear(layer_norm(latents, w(p + "1.0.weight"), w(p + "1.0.bias")),
                           w(p + "1.1.weight"), nullptr);  // [16, ff_mult·dim]
      f = f.unaryExpr(&gelu_erf);
      latents += linear(f, w(p + "1.3.weight"), nullptr);
    }
    const RowMatrix y = layer_norm(linear(latents, w("proj_out.weight"), &w("proj_out.bias")),
                                   w("norm_out.weight"), w("norm_out.bias"));  // [16, D_out]
    detail::MatrixMap(out.data() + b * queries * d_out, queries, d_out) = y;
  }
  return out;
}

}  // namespace instantid::ref
