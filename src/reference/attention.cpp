// Spec §4: plain multi-head attention and the ip keys/values of one layer.

#include <algorithm>
#include <cmath>

#include "eigen_maps.hpp"
#include "instantid/reference.hpp"

namespace instantid::ref {

using detail::as_matrix;
using detail::ConstStridedMap;
using detail::RowMatrix;

namespace {
constexpr int kHeadDim = 64;
}

HostTensor attention(const HostTensor& q, const HostTensor& k, const HostTensor& v) {
  INSTANTID_CHECK(q.ndim() == 3, "attention q: got ", q.shape_str(), ", expected [B, N, C]");
  INSTANTID_CHECK(k.ndim() == 3, "attention k: got ", k.shape_str(), ", expected [B, L, C]");
  INSTANTID_CHECK(k.shape() == v.shape(), "attention v: got ", v.shape_str(), ", expected ",
                  k.shape_str(), " (the shape of k)");
  const std::int64_t batch = q.size(0), n = q.size(1), c = q.size(2);
  const std::int64_t l = k.size(1);
  INSTANTID_CHECK(c > 0 && c % kHeadDim == 0, "attention channels: got ", c,
                  ", expected a positive multiple of ", kHeadDim);
  INSTANTID_CHECK(k.size(2) == c, "attention k channels: got ", k.size(2), ", expected ", c,
                  " (q's channels)");
  INSTANTID_CHECK(k.size(0) == batch || k.size(0) == 1, "attention k batch: got ", k.size(0),
                  ", expected ", batch, " or 1");
  INSTANTID_CHECK(l > 0, "attention k: got ", k.shape_str(), ", expected at least one token");
  const std::int64_t heads = c / kHeadDim;
  constexpr float kScale = 0.125f;  // 1 / sqrt(64)
  HostTensor out(q.shape());
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t kb = k.size(0) == 1 ? 0 : b;
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t c0 = h * kHeadDim;
      const ConstStridedMap qh(q.data() + b * n * c + c0, n, kHeadDim, Eigen::OuterStride<>(c));
      const ConstStridedMap kh(k.data() + kb * l * c + c0, l, kHeadDim, Eigen::OuterStride<>(c));
      const ConstStridedMap vh(v.data() + kb * l * c + c0, l, kHeadDim, Eigen::OuterStride<>(c));
      RowMatrix s = (qh * kh.transpose()) * kScale;  // [N, L]
      for (Eigen::Index r = 0; r < s.rows(); ++r) {
        const float max = s.row(r).maxCoeff();
        s.row(r) = (s.row(r).array() - max).exp();
        s.row(r) /= s.row(r).sum();
      }
      detail::StridedMap(out.data() + b * n * c + c0, n, kHeadDim, Eigen::OuterStride<>(c)) =
          s * vh;
    }
  }
  return out;
}

float ip_output_scale(EmbedsScaling scaling, float weight) {
  return scaling == EmbedsScaling::kVOnly ? weight : 1.0f;
}

IpKeyValues ip_key_values(const InstantIDModel& model, const ImageTokens& tokens, int layer_index,
                          EmbedsScaling scaling, float weight) {
  const ModelLayout& layout = model.layout();
  INSTANTID_CHECK(layer_index >= 0 && layer_index < layout.num_layers(),
                  "ip_key_values layer_index: got ", layer_index, ", expected 0..",
                  layout.num_layers() - 1);
  const std::int64_t d_out = model.output_dim();
  for (const HostTensor* t : {&tokens.cond, &tokens.uncond}) {
    INSTANTID_CHECK(t->ndim() == 3 && t->size(0) == 1 && t->size(2) == d_out && t->size(1) > 0,
                    "ip_key_values tokens: got ", t->shape_str(), ", expected [1, T, ", d_out, "]");
  }
  INSTANTID_CHECK(tokens.cond.shape() == tokens.uncond.shape(), "ip_key_values uncond tokens: got ",
                  tokens.uncond.shape_str(), ", expected ", tokens.cond.shape_str(),
                  " (the cond tokens' shape)");
  INSTANTID_CHECK(std::isfinite(weight), "ip_key_values weight: got ", weight,
                  ", expected a finite value");
  const HostTensor& wk = model.to_k_ip(layer_index);  // [C, D_out]
  const HostTensor& wv = model.to_v_ip(layer_index);  // [C, D_out]
  const std::int64_t width = wk.size(0);
  const std::int64_t t = tokens.cond.size(1);

  // ComfyUI multiplies by a Python float (weight · C / 1280 in double), applied in float32.
  const float penalised =
      static_cast<float>(static_cast<double>(weight) * static_cast<double>(width) / 1280.0);
  auto project = [&](const HostTensor& x, const HostTensor& w) {
    HostTensor y({t, width});
    as_matrix(y) = as_matrix(x) * as_matrix(w).transpose();
    return y;
  };
  auto scale_k = [&](HostTensor& kt) {
    if (scaling == EmbedsScaling::kVOnly) return;
    const float f = scaling == EmbedsScaling::kKV ? weight : penalised;
    for (float& x : kt.values()) x *= f;
  };
  auto scale_v = [&](HostTensor& vt) {
    switch (scaling) {
      case EmbedsScaling::kVOnly:
        return;
      case EmbedsScaling::kKV:
        for (float& x : vt.values()) x *= weight;
        return;
      case EmbedsScaling::kKVCPenalty:
        for (float& x : vt.values()) x *= penalised;
        return;
      case EmbedsScaling::kKMeanVCPenalty: {
        // ip_v = (ip_v - mean_tokens(ip_v)) + mean_tokens(ip_v) · w'
        auto m = as_matrix(vt);
        const Eigen::RowVectorXf mean = m.colwise().sum() / static_cast<float>(t);
        for (Eigen::Index r = 0; r < m.rows(); ++r) {
          m.row(r) = (m.row(r) - mean) + mean * penalised;
        }
        return;
      }
    }
  };
  IpKeyValues kv{project(tokens.cond, wk), project(tokens.cond, wv), project(tokens.uncond, wk),
                 project(tokens.uncond, wv)};
  scale_k(kv.k_cond);
  scale_k(kv.k_uncond);
  scale_v(kv.v_cond);
  scale_v(kv.v_uncond);
  return kv;
}

}  // namespace instantid::ref

namespace instantid::ref {

HostTensor ip_attention(const HostTensor& q, const IpKeyValues& kv,
                        const std::vector<int>& cond_or_uncond, float output_scale,
                        const HostTensor* mask_rows) {
  INSTANTID_CHECK(q.ndim() == 3, "ip_attention q: got ", q.shape_str(), ", expected [B, N, C]");
  const std::int64_t batch = q.size(0), n = q.size(1), c = q.size(2);
  const auto groups = static_cast<std::int64_t>(cond_or_uncond.size());
  INSTANTID_CHECK(groups > 0 && batch % groups == 0, "ip_attention cond_or_uncond: got ", groups,
                  " chunks for batch ", batch, ", expected a divisor of the batch");
  for (const HostTensor* t : {&kv.k_cond, &kv.v_cond, &kv.k_uncond, &kv.v_uncond}) {
    INSTANTID_CHECK(t->ndim() == 2 && t->size(1) == c && t->shape() == kv.k_cond.shape(),
                    "ip_attention ip keys/values: got ", t->shape_str(), ", expected [T, ", c, "]");
  }
  const std::int64_t per_chunk = batch / groups;
  const std::int64_t t = kv.k_cond.size(0);
  HostTensor k({batch, t, c}), v({batch, t, c});
  for (std::int64_t b = 0; b < batch; ++b) {
    const int which = cond_or_uncond[static_cast<std::size_t>(b / per_chunk)];
    INSTANTID_CHECK(which == 0 || which == 1, "ip_attention cond_or_uncond[", b / per_chunk,
                    "]: got ", which, ", expected 0 (cond) or 1 (uncond)");
    const HostTensor& ks = which == 0 ? kv.k_cond : kv.k_uncond;
    const HostTensor& vs = which == 0 ? kv.v_cond : kv.v_uncond;
    std::copy(ks.data(), ks.data() + t * c, k.data() + b * t * c);
    std::copy(vs.data(), vs.data() + t * c, v.data() + b * t * c);
  }
  HostTensor out = attention(q, k, v);
  if (mask_rows != nullptr) {
    INSTANTID_CHECK(mask_rows->ndim() == 2 && mask_rows->size(1) == n && mask_rows->size(0) > 0,
                    "ip_attention mask rows: got ", mask_rows->shape_str(), ", expected [M, ", n,
                    "]");
  }
  const std::int64_t m = mask_rows != nullptr ? mask_rows->size(0) : 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const float* row = mask_rows != nullptr ? mask_rows->data() + std::min(b % per_chunk, m - 1) * n
                                            : nullptr;  // [N]
    float* o = out.data() + b * n * c;                  // [N, C]
    for (std::int64_t i = 0; i < n; ++i) {
      const float f = row != nullptr ? output_scale * row[i] : output_scale;
      for (std::int64_t j = 0; j < c; ++j) o[i * c + j] *= f;
    }
  }
  return out;
}

}  // namespace instantid::ref
