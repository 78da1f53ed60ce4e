// The reference and the CPU AttentionPatch at the real SDXL shapes (Resampler 1280 wide, 20 heads,
// D_out 2048, 70 layers of width 640/1280, 4096/1024-token layers), with InstantIDModel::synthetic's
// random weights (about 1.7 GB of float32), checked against independent float64 loops.

#include <catch2/catch.hpp>
#include <cmath>

#include "instantid/patch.hpp"
#include "instantid/reference.hpp"
#include "reference_math/golden.hpp"
#include "reference_math/naive_fp64.hpp"

namespace instantid {
namespace {

// InstantIDModel::synthetic: linear weights U(±1/sqrt(fan_in)), LayerNorm weights near 1 and small
// biases, so activations stay in the range of the real model.
const InstantIDModel& sdxl_model() {
  static const InstantIDModel model = InstantIDModel::synthetic(ModelLayout::sdxl(), 2048, 1);
  return model;
}

TEST_CASE("SDXL shapes: Resampler against float64", "[reference][sdxl]") {
  const InstantIDModel& model = sdxl_model();
  REQUIRE(model.output_dim() == 2048);
  const HostTensor x = test::hash_values(77, {1, 1, 512}, 1.0f);
  const HostTensor y = ref::resampler(model, x);
  REQUIRE(y.shape() == std::vector<std::int64_t>{1, 16, 2048});
  const test::Matrix64 expected = test::resampler64(model, test::to_matrix64(x.data(), 1, 512));
  const double err = test::rel_l2_64(y.data(), expected);
  INFO("relative L2 error of the float32 Resampler: " << err);
  CHECK(err <= 1e-5);

  const ImageTokens concat = project_face_embeddings(model, test::hash_values(78, {2, 512}, 1.0f),
                                                     Combine::kConcat, 0.25f);
  CHECK(concat.cond.shape() == std::vector<std::int64_t>{1, 32, 2048});
  CHECK(concat.uncond_input.shape() == std::vector<std::int64_t>{2, 1, 512});
}

TEST_CASE("SDXL shapes: ip K/V of a 640 and a 1280 layer against float64", "[reference][sdxl]") {
  const InstantIDModel& model = sdxl_model();
  const ImageTokens tokens = project_face_embeddings(model, test::hash_values(79, {1, 512}, 1.0f),
                                                     Combine::kAverage, 0.0f);
  for (const LayerId id : {LayerId{BlockType::kInput, 4, 0}, LayerId{BlockType::kMiddle, 0, 9}}) {
    const int n = model.layout().index_of(id);
    INFO("layer " << layer_id_string(id));
    const ref::IpKeyValues kv = ref::ip_key_values(model, tokens, n, EmbedsScaling::kVOnly, 1.0f);
    const test::Matrix64 cond = test::to_matrix64(tokens.cond.data(), 16, 2048);
    const test::Matrix64 uncond = test::to_matrix64(tokens.uncond.data(), 16, 2048);
    CHECK(test::rel_l2_64(kv.k_cond.data(), test::linear64(cond, model.to_k_ip(n), nullptr)) <=
          1e-6);
    CHECK(test::rel_l2_64(kv.v_cond.data(), test::linear64(cond, model.to_v_ip(n), nullptr)) <=
          1e-6);
    CHECK(test::rel_l2_64(kv.v_uncond.data(), test::linear64(uncond, model.to_v_ip(n), nullptr)) <=
          1e-6);
  }
}

TEST_CASE("SDXL shapes: AttentionPatch rows against float64, unreached middle layers",
          "[patch][sdxl]") {
  const InstantIDModel& model = sdxl_model();
  PatchOptions options;
  options.weight = 0.8f;
  options.noise = 0.35f;
  HostTensor mask = test::hash_values(80, {1, 1024, 768}, 0.5f);
  for (float& m : mask.values()) m += 0.5f;
  options.mask = mask;
  AttentionPatch patch(model, test::hash_values(81, {2, 512}, 1.0f), options);
  const int oh = 128, ow = 96;  // latent of a 1024 x 768 image
  patch.prepare_resolution(oh, ow);
  const int cou[] = {1, 0};
  struct Layer {
    LayerId id;
    std::int64_t tokens;
  };
  for (const Layer& layer :
       {Layer{{BlockType::kInput, 4, 1}, 64 * 48}, Layer{{BlockType::kMiddle, 0, 3}, 32 * 24}}) {
    const int index = model.layout().index_of(layer.id);
    const int c = model.layout().layers[static_cast<std::size_t>(index)].width;
    INFO("layer " << layer_id_string(layer.id) << ", " << layer.tokens << " tokens, width " << c);
    HostTensor q = test::hash_values(90, {2, layer.tokens, c}, 1.0f);
    HostTensor k = test::hash_values(91, {2, 77, c}, 1.0f);
    HostTensor v = test::hash_values(92, {2, 77, c}, 1.0f);
    HostTensor out(q.shape(), std::nanf(""));
    patch.attention(AttentionCall{q.view(), k.view(), v.view(), out.view(), layer.id, 5.0, cou, 2,
                                  oh, ow, nullptr});
    const HostTensor rows = ref::layer_mask(mask, oh, ow, layer.tokens);
    const ImageTokens& t = patch.tokens(0);
    for (int b = 0; b < 2; ++b) {
      const HostTensor& src = cou[b] == 0 ? t.cond : t.uncond;
      const test::Matrix64 tok = test::to_matrix64(src.data(), 16, 2048);
      const test::Matrix64 ik = test::linear64(tok, model.to_k_ip(index), nullptr);
      const test::Matrix64 iv = test::linear64(tok, model.to_v_ip(index), nullptr);
      const test::Matrix64 tk = test::to_matrix64(k.data() + b * 77 * c, 77, c);
      const test::Matrix64 tv = test::to_matrix64(v.data() + b * 77 * c, 77, c);
      for (std::int64_t n :
           {std::int64_t{0}, std::int64_t{1}, layer.tokens / 2 + 3, layer.tokens - 1}) {
        const std::vector<double> qrow(q.data() + (b * layer.tokens + n) * c,
                                       q.data() + (b * layer.tokens + n + 1) * c);
        test::Matrix64 expected(1, std::vector<double>(static_cast<std::size_t>(c)));
        for (int h = 0; h < c / 64; ++h) {
          const std::size_t c0 = static_cast<std::size_t>(h) * 64;
          const std::vector<double> text = test::attend64(qrow, tk, tv, c0, 64, 0.125);
          const std::vector<double> ip = test::attend64(qrow, ik, iv, c0, 64, 0.125);
          for (std::size_t j = 0; j < 64; ++j)
            expected[0][c0 + j] = text[j] + 0.8 * rows.data()[n] * ip[j];
        }
        INFO("batch " << b << " row " << n << " mask " << rows.data()[n]);
        CHECK(test::rel_l2_64(out.data() + (b * layer.tokens + n) * c, expected) <= 1e-5);
      }
    }
  }
  // A host that registered the middle block as ("middle", 1) never calls those 10 layers.
  patch.begin_step();
  for (const LayerInfo& l : model.layout().layers) {
    if (l.id.block == BlockType::kMiddle) continue;
    HostTensor q({2, 4, l.width}, 0.1f), k({2, 3, l.width}, 0.2f), v({2, 3, l.width}, 0.3f);
    HostTensor out(q.shape());
    patch.attention(AttentionCall{q.view(), k.view(), v.view(), out.view(), l.id, 50.0, cou, 2, oh,
                                  ow, nullptr});
  }
  const std::vector<LayerId> missed = patch.unreached_layers();
  REQUIRE(missed.size() == 10);
  CHECK(missed.front() == (LayerId{BlockType::kMiddle, 0, 0}));
  CHECK(missed.back() == (LayerId{BlockType::kMiddle, 0, 9}));
}

}  // namespace
}  // namespace instantid
