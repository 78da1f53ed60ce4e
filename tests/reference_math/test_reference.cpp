// The CPU reference (instantid::ref) against goldens computed by tests/reference/make_goldens.py
// directly in PyTorch 1.13, and against small exact cases.

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "instantid/reference.hpp"
#include "reference_math/golden.hpp"

namespace instantid {
namespace {

using test::golden_model;
using test::goldens;
using test::rel_l2;

constexpr double kTol = 1e-5;  // relative L2 against the float64-evaluated goldens

bool bit_equal(const HostTensor& a, const HostTensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.numel())) == 0;
}

TEST_CASE("torch_rand equals torch.manual_seed + torch.rand bit for bit", "[reference][noise]") {
  const std::vector<std::int64_t> seeds = goldens().i64("rand.seeds");
  REQUIRE(seeds.size() == 6);
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    INFO("seed " << seeds[i]);
    const HostTensor expected = goldens().f32("rand." + std::to_string(i));
    const std::vector<float> got = ref::torch_rand(static_cast<std::uint64_t>(seeds[i]), 1000);
    REQUIRE(bit_equal(HostTensor({1000}, got), expected));
  }
}

TEST_CASE("noise_seed follows Python's int() and % semantics", "[reference][noise]") {
  const float positive[] = {1.75f, 2.5f};    // 4.25 → 4
  const float negative[] = {-1.75f, -2.5f};  // -4.25 → int -4 → -4 % 1000000007 = 1000000003
  const float big[] = {1.0e9f, 2.0e8f};      // 1.2e9 → 1200000000 % 1000000007 = 199999993
  CHECK(ref::noise_seed(positive, 2) == 4);
  CHECK(ref::noise_seed(negative, 2) == 1000000003);
  CHECK(ref::noise_seed(big, 2) == 199999993);
  const float huge[] = {-3.0e38f};  // int(-3e38) % 1000000007 in Python
  CHECK(ref::noise_seed(huge, 1) == 478944860);
  const float nan[] = {std::nanf("")};
  CHECK_THROWS_WITH(ref::noise_seed(nan, 1), Catch::Contains("expected a finite value"));
}

TEST_CASE("combine, noise and the Resampler match PyTorch", "[reference][resampler]") {
  const InstantIDModel& model = golden_model();
  for (const test::ProjectionCase& p : test::kProjections) {
    const std::string base = std::string("proj.") + p.name + ".";
    INFO("projection " << p.name << " (" << combine_name(p.combine) << ", noise " << p.noise
                       << ")");
    const HostTensor embeds = test::projection_embeds(p);
    const HostTensor cond_input = ref::combine_embeddings(embeds, p.combine);
    CHECK(rel_l2(cond_input, goldens().f32(base + "cond_input")) <= 1e-6);
    const HostTensor uncond = ref::uncond_input(cond_input, p.noise);
    const std::int64_t seed = goldens().i64(base + "seed").at(0);
    if (p.noise > 0) {
      CHECK(static_cast<std::int64_t>(ref::noise_seed(
                cond_input.data(), static_cast<std::size_t>(cond_input.numel()))) == seed);
      CHECK(bit_equal(uncond, goldens().f32(base + "uncond_input")));
    } else {
      CHECK(seed == -1);
      for (float x : uncond.values()) REQUIRE(x == 0.0f);
    }
    const HostTensor cond_tokens = ref::resampler(model, cond_input);  // [k, 16, 32]
    CHECK(cond_tokens.shape() == std::vector<std::int64_t>{cond_input.size(0), 16, 32});
    const HostTensor expected_cond = goldens().f32(base + "cond");  // [1, 16k, 32]
    CHECK(rel_l2(cond_tokens.reshaped(expected_cond.shape()), expected_cond) <= kTol);

    const ImageTokens tokens = project_face_embeddings(model, embeds, p.combine, p.noise);
    CHECK(rel_l2(tokens.cond, expected_cond) <= kTol);
    CHECK(rel_l2(tokens.uncond, goldens().f32(base + "uncond")) <= kTol);
    CHECK(bit_equal(tokens.uncond_input, uncond));
  }
}

TEST_CASE("Resampler input errors name the shape", "[reference][resampler]") {
  CHECK_THROWS_WITH(ref::resampler(golden_model(), HostTensor({1, 1, 63})),
                    "resampler input: got [1, 1, 63], expected [B, T, 64]");
  CHECK_THROWS_WITH(ref::combine_embeddings(HostTensor({2, 3, 64}), Combine::kAverage),
                    "combine_embeddings embeds: got [2, 3, 64], expected [N, E] or [N, 1, E]");
  CHECK_THROWS_WITH(ref::uncond_input(HostTensor({1, 1, 64}), -1.0f),
                    "uncond_input noise: got -1, expected a finite value >= 0");
  CHECK_THROWS_WITH(
      project_face_embeddings(golden_model(), HostTensor({2, 512}), Combine::kAverage, 0.0f),
      "face embeddings: got [2, 512], expected [N, 64] or [N, 1, 64]");
}

TEST_CASE("ip K/V with each embeds_scaling mode match PyTorch", "[reference][ipkv]") {
  const InstantIDModel& model = golden_model();
  ImageTokens tokens{goldens().f32("proj.single.cond"), goldens().f32("proj.single.uncond"), {}};
  const int layer = golden_model().layout().index_of(LayerId{BlockType::kInput, 4, 0});
  for (EmbedsScaling s : {EmbedsScaling::kVOnly, EmbedsScaling::kKV, EmbedsScaling::kKVCPenalty,
                          EmbedsScaling::kKMeanVCPenalty}) {
    INFO("embeds_scaling " << embeds_scaling_name(s));
    const ref::IpKeyValues kv = ref::ip_key_values(model, tokens, layer, s, 0.75f);
    const std::string base = std::string("ipkv.") + embeds_scaling_name(s) + ".";
    CHECK(rel_l2(kv.k_cond, goldens().f32(base + "k_cond")) <= kTol);
    CHECK(rel_l2(kv.v_cond, goldens().f32(base + "v_cond")) <= kTol);
    CHECK(kv.k_uncond.shape() == std::vector<std::int64_t>{16, 64});
    CHECK(ref::ip_output_scale(s, 0.75f) == (s == EmbedsScaling::kVOnly ? 0.75f : 1.0f));
  }
  CHECK_THROWS_WITH(ref::ip_key_values(model, tokens, 70, EmbedsScaling::kVOnly, 1.0f),
                    "ip_key_values layer_index: got 70, expected 0..69");
}

// The patched attn2 of one case composed from the reference functions.
HostTensor patched_attn2(const test::AttentionCase& c, const test::CaseInputs& in, int layer) {
  const InstantIDModel& model = golden_model();
  HostTensor out = ref::attention(in.q, in.k, in.v);
  const double sigma = c.sigma.value_or(kNoSigma);
  for (const test::IdentityCase& id : c.identities) {
    PatchOptions options;
    options.weight = id.weight;
    options.start_at = id.start_at;
    options.end_at = id.end_at;
    if (!resolve_sigma_range(options).contains(sigma) || id.weight == 0.0f) continue;
    const test::ProjectionCase& p = test::projection_case(id.projection);
    const ImageTokens tokens =
        project_face_embeddings(model, test::projection_embeds(p), p.combine, p.noise);
    const ref::IpKeyValues kv = ref::ip_key_values(model, tokens, layer, id.scaling, id.weight);
    HostTensor mask_rows;
    if (id.mask != nullptr) {
      mask_rows = ref::layer_mask(test::golden_mask(id.mask), c.original_height, c.original_width,
                                  c.tokens);
    }
    const HostTensor ip =
        ref::ip_attention(in.q, kv, c.cond_or_uncond, ref::ip_output_scale(id.scaling, id.weight),
                          id.mask != nullptr ? &mask_rows : nullptr);
    for (std::int64_t i = 0; i < out.numel(); ++i) out.data()[i] += ip.data()[i];
  }
  return out;
}

TEST_CASE("patched attention cases match the ComfyUI formulas in PyTorch", "[reference][patch]") {
  for (const test::AttentionCase& c : test::kAttentionCases) {
    INFO("case " << c.name);
    const int layer = golden_model().layout().index_of(c.layer);
    const int width = golden_model().layout().layers[static_cast<std::size_t>(layer)].width;
    const test::CaseInputs in = test::case_inputs(c, width);
    const std::string base = std::string("case.") + c.name + ".";
    const HostTensor text = ref::attention(in.q, in.k, in.v);
    if (c.has_text) CHECK(rel_l2(text, goldens().f32(base + "text")) <= kTol);
    const HostTensor out = patched_attn2(c, in, layer);
    const HostTensor expected = goldens().f32(base + "out");
    CHECK(rel_l2(out, expected) <= kTol);
    if (std::string(c.name) == "gated_none")
      CHECK(bit_equal(out, text));  // inactive: text only
    else
      CHECK(rel_l2(text, expected) > 1e-3);  // the ip term is really there
  }
}

TEST_CASE("attention broadcasts k/v with batch 1 and checks shapes", "[reference][attention]") {
  const HostTensor q = test::hash_values(1, {3, 5, 128}, 1.0f);
  const HostTensor k = test::hash_values(2, {1, 7, 128}, 1.0f);
  const HostTensor v = test::hash_values(3, {1, 7, 128}, 1.0f);
  HostTensor k3({3, 7, 128}), v3({3, 7, 128});
  for (int b = 0; b < 3; ++b) {
    std::copy(k.values().begin(), k.values().end(), k3.data() + b * 7 * 128);
    std::copy(v.values().begin(), v.values().end(), v3.data() + b * 7 * 128);
  }
  CHECK(bit_equal(ref::attention(q, k, v), ref::attention(q, k3, v3)));
  // One key: softmax is 1 and the output is v exactly.
  const HostTensor one_v = test::hash_values(4, {1, 1, 64}, 1.0f);
  const HostTensor out = ref::attention(test::hash_values(5, {1, 3, 64}, 1.0f),
                                        test::hash_values(6, {1, 1, 64}, 1.0f), one_v);
  for (int n = 0; n < 3; ++n)
    for (int j = 0; j < 64; ++j) REQUIRE(out.data()[n * 64 + j] == one_v.data()[j]);
  CHECK_THROWS_WITH(
      ref::attention(HostTensor({1, 2, 96}), HostTensor({1, 2, 96}), HostTensor({1, 2, 96})),
      "attention channels: got 96, expected a positive multiple of 64");
  CHECK_THROWS_WITH(
      ref::attention(HostTensor({2, 2, 64}), HostTensor({3, 2, 64}), HostTensor({3, 2, 64})),
      "attention k batch: got 3, expected 2 or 1");
  CHECK_THROWS_WITH(
      ref::attention(HostTensor({2, 2, 64}), HostTensor({2, 2, 64}), HostTensor({2, 3, 64})),
      "attention v: got [2, 3, 64], expected [2, 2, 64] (the shape of k)");
}

TEST_CASE("layer_mask and bilinear_resize match F.interpolate + pad", "[reference][mask]") {
  const HostTensor m2 = test::golden_mask("m2");
  const int grids[][3] = {{96, 64, 26}, {96, 64, 24}, {64, 96, 100}, {128, 128, 64}, {80, 48, 77}};
  const std::int64_t expected_hw[][2] = {{7, 3}, {6, 4}, {9, 11}, {8, 8}, {11, 7}};
  for (int i = 0; i < 5; ++i) {
    INFO("oh " << grids[i][0] << " ow " << grids[i][1] << " N " << grids[i][2]);
    const ref::MaskGrid g = ref::mask_grid(grids[i][0], grids[i][1], grids[i][2]);
    CHECK(g.height == expected_hw[i][0]);
    CHECK(g.width == expected_hw[i][1]);
    const HostTensor got = ref::layer_mask(m2, grids[i][0], grids[i][1], grids[i][2]);
    CHECK(test::max_abs_diff(got, goldens().f32("layer_mask." + std::to_string(i))) <= 1e-6);
  }
  const HostTensor m3 = test::golden_mask("m3");
  const std::int64_t sizes[][2] = {{9, 13}, {40, 60}, {17, 29}, {1, 1}, {5, 80}};
  for (int i = 0; i < 5; ++i) {
    INFO("resize to " << sizes[i][0] << "x" << sizes[i][1]);
    const HostTensor got = ref::bilinear_resize(m3, sizes[i][0], sizes[i][1]);
    CHECK(test::max_abs_diff(got, goldens().f32("resize." + std::to_string(i))) <= 1e-6);
  }
}

TEST_CASE("pad_or_crop_tokens pads and centre-crops exactly", "[reference][mask]") {
  HostTensor rows({2, 5}, std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  // pad 4: 2 before, 2 after; pad 3: 1 before, 2 after
  CHECK(ref::pad_or_crop_tokens(rows, 9).values() ==
        std::vector<float>{0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 6, 7, 8, 9, 10, 0, 0});
  CHECK(ref::pad_or_crop_tokens(rows, 8).values() ==
        std::vector<float>{0, 1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 9, 10, 0, 0});
  // crop (unreachable through mask_grid): keep N from floor((L - N) / 2)
  CHECK(ref::pad_or_crop_tokens(rows, 2).values() == std::vector<float>{2, 3, 7, 8});
  CHECK(ref::pad_or_crop_tokens(rows, 3).values() == std::vector<float>{2, 3, 4, 7, 8, 9});
  CHECK(ref::pad_or_crop_tokens(rows, 5).values() == rows.values());
  // mask_h · mask_w never exceeds N through the formula (spec §6).
  for (int n = 1; n <= 300; ++n) {
    for (int oh : {8, 13, 64, 96, 128}) {
      for (int ow : {8, 21, 64, 96}) {
        try {
          const ref::MaskGrid g = ref::mask_grid(oh, ow, n);
          REQUIRE(g.height * g.width <= n);
        } catch (const Error&) {
          // extreme aspect ratios for tiny N: int(mask_h) or mask_w is 0, refused
        }
      }
    }
  }
  CHECK_THROWS_WITH(ref::mask_grid(1, 64, 2), Catch::Contains("got int(mask_h) = 0"));
  CHECK_THROWS_WITH(ref::layer_mask(HostTensor({4, 4}), 8, 8, 16),
                    "mask: got [4, 4], expected a non-empty [M, Hm, Wm]");
}

TEST_CASE("DiscreteSchedule equals ComfyUI's ModelSamplingDiscrete bit for bit",
          "[reference][schedule]") {
  const DiscreteSchedule schedule;
  CHECK(bit_equal(HostTensor({1000}, schedule.sigmas()), goldens().f32("schedule.sigmas")));
  CHECK(bit_equal(HostTensor({1000}, schedule.log_sigmas()), goldens().f32("schedule.log_sigmas")));
  const std::vector<double> percents = goldens().f64("schedule.percents");
  const std::vector<double> sigmas = goldens().f64("schedule.percent_to_sigma");
  REQUIRE(percents.size() == sigmas.size());
  for (std::size_t i = 0; i < percents.size(); ++i) {
    INFO("percent " << percents[i]);
    const auto p = static_cast<float>(percents[i]);
    CHECK(static_cast<double>(schedule.percent_to_sigma(p)) ==
          (p <= 0.0f ? static_cast<double>(static_cast<float>(kNoSigma)) : sigmas[i]));
    if (p < 0.0f || p > 1.0f) continue;  // valid for percent_to_sigma, not for PatchOptions
    PatchOptions o;
    o.start_at = p;
    CHECK(resolve_sigma_range(o, schedule).start == sigmas[i]);
  }
}

TEST_CASE("option names round-trip and unknown names are refused", "[reference][options]") {
  for (EmbedsScaling s : {EmbedsScaling::kVOnly, EmbedsScaling::kKV, EmbedsScaling::kKVCPenalty,
                          EmbedsScaling::kKMeanVCPenalty})
    CHECK(parse_embeds_scaling(embeds_scaling_name(s)) == s);
  for (Combine c : {Combine::kAverage, Combine::kNormAverage, Combine::kConcat})
    CHECK(parse_combine(combine_name(c)) == c);
  CHECK(parse_combine("norm-average") == Combine::kNormAverage);
  CHECK_THROWS_WITH(parse_embeds_scaling("V"),
                    "embeds_scaling: got \"V\", expected \"V only\", \"K+V\", \"K+V w/ C penalty\" "
                    "or \"K+mean(V) w/ C penalty\"");
  CHECK_THROWS_WITH(parse_combine("sum"),
                    "combine_embeds: got \"sum\", expected \"average\", \"norm average\" or "
                    "\"concat\"");
}

TEST_CASE("validate(PatchOptions) names the first bad field", "[reference][options]") {
  PatchOptions o;
  CHECK_NOTHROW(validate(o));
  o.weight = std::nanf("");
  CHECK_THROWS_WITH(validate(o), "PatchOptions.weight: got nan, expected a finite value");
  o = {};
  o.start_at = -0.5f;
  CHECK_THROWS_WITH(validate(o), "PatchOptions.start_at: got -0.5, expected a value in [0, 1]");
  o = {};
  o.start_at = 0.5f;
  o.end_at = 0.25f;
  CHECK_THROWS_WITH(validate(o),
                    "PatchOptions.end_at: got 0.25, expected a value in [start_at = 0.5, 1]");
  o = {};
  o.noise = -1.0f;
  CHECK_THROWS_WITH(validate(o), "PatchOptions.noise: got -1, expected a finite value >= 0");
  o = {};
  o.mask = HostTensor({8, 8});
  CHECK_THROWS_WITH(validate(o), "PatchOptions.mask: got [8, 8], expected a non-empty [M, Hm, Wm]");
  o.mask = HostTensor({1, 2, 2}, std::vector<float>{0.0f, 1.0f, 1.5f, 0.5f});
  CHECK_THROWS_WITH(validate(o),
                    "PatchOptions.mask value at flat index 2: got 1.5, expected a value in [0, 1]");
  o = {};
  o.sigma_range = SigmaRange{1.0, 2.0};
  CHECK_THROWS_WITH(validate(o),
                    "PatchOptions.sigma_range: got start 1, end 2, expected 0 <= end <= start");
  o.sigma_range = SigmaRange{3.0, 2.0};
  CHECK(resolve_sigma_range(o).start == 3.0);
  CHECK(resolve_sigma_range(PatchOptions{}).start == kNoSigma);
  CHECK(resolve_sigma_range(PatchOptions{}).end == 0.0);
}

}  // namespace
}  // namespace instantid

namespace instantid {
namespace {

TEST_CASE("the committed checkpoint loads from both formats and gives the same tokens",
          "[reference][checkpoint]") {
  const InstantIDModel& expected = test::golden_model();
  const test::ProjectionCase& p = test::projection_case("navg");
  const HostTensor embeds = test::projection_embeds(p);
  for (const char* file : {"model.bin", "model.safetensors"}) {
    INFO("checkpoint " << file);
    const InstantIDModel model =
        InstantIDModel::load(test::golden_path(file), test::golden_layout());
    CHECK(model.output_dim() == 32);
    CHECK(model.storage_dtype() == DType::kF16);
    REQUIRE(model.tensors().size() == expected.tensors().size());
    for (const auto& [name, tensor] : expected.tensors()) {
      INFO("tensor " << name);
      REQUIRE(test::rel_l2(model.tensor(name), tensor) <= 1e-5);
    }
    const ImageTokens tokens = project_face_embeddings(model, embeds, p.combine, p.noise);
    CHECK(test::rel_l2(tokens.cond, test::goldens().f32("proj.navg.cond")) <= 1e-5);
    CHECK(test::rel_l2(tokens.uncond, test::goldens().f32("proj.navg.uncond")) <= 1e-5);
  }
}

}  // namespace
}  // namespace instantid
