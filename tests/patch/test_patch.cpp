// AttentionPatch (CPU backend) against the goldens of tests/reference/make_goldens.py, plus the
// API's argument validation and step bookkeeping.

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>

#include "instantid/patch.hpp"
#include "instantid/reference.hpp"
#include "reference_math/golden.hpp"

namespace instantid {
namespace {

using test::golden_model;
using test::goldens;
using test::rel_l2;

PatchOptions options_of(const test::IdentityCase& id) {
  PatchOptions o;
  o.weight = id.weight;
  o.embeds_scaling = id.scaling;
  o.start_at = id.start_at;
  o.end_at = id.end_at;
  const test::ProjectionCase& p = test::projection_case(id.projection);
  o.combine = p.combine;
  o.noise = p.noise;
  if (id.mask != nullptr) o.mask = test::golden_mask(id.mask);
  return o;
}

AttentionPatch patch_of(const InstantIDModel& model, const test::AttentionCase& c) {
  const test::IdentityCase& first = c.identities.front();
  AttentionPatch patch(model, test::projection_embeds(test::projection_case(first.projection)),
                       options_of(first));
  for (std::size_t i = 1; i < c.identities.size(); ++i) {
    const test::IdentityCase& id = c.identities[i];
    patch.stack(model, test::projection_embeds(test::projection_case(id.projection)),
                options_of(id));
  }
  return patch;
}

AttentionCall call_of(const test::AttentionCase& c, test::CaseInputs& in, HostTensor& out) {
  AttentionCall call;
  call.q = in.q.view();
  call.k = in.k.view();
  call.v = in.v.view();
  call.out = out.view();
  call.layer = c.layer;
  call.sigma = c.sigma;
  call.cond_or_uncond = c.cond_or_uncond.data();
  call.num_chunks = static_cast<int>(c.cond_or_uncond.size());
  call.original_height = c.original_height;
  call.original_width = c.original_width;
  return call;
}

int width_of(const test::AttentionCase& c) {
  const ModelLayout& layout = golden_model().layout();
  return layout.layers[static_cast<std::size_t>(layout.index_of(c.layer))].width;
}

TEST_CASE("AttentionPatch on the CPU matches the PyTorch goldens", "[patch][golden]") {
  // The model as the checkpoint loader reads the committed .bin.
  const InstantIDModel model =
      InstantIDModel::load(test::golden_path("model.bin"), test::golden_layout());
  for (const test::AttentionCase& c : test::kAttentionCases) {
    INFO("case " << c.name);
    AttentionPatch patch = patch_of(model, c);
    REQUIRE(patch.num_identities() == static_cast<int>(c.identities.size()));
    CHECK(patch.backend() == Backend::kCpu);
    CHECK(patch.device_bytes() == 0);
    test::CaseInputs in = test::case_inputs(c, width_of(c));
    const HostTensor expected = goldens().f32(std::string("case.") + c.name + ".out");

    HostTensor out(in.q.shape(), std::numeric_limits<float>::quiet_NaN());  // poisoned
    patch.attention(call_of(c, in, out));
    CHECK(rel_l2(out, expected) <= 1e-5);

    // add_image_attention onto a host-computed text attention gives the same result.
    HostTensor added = ref::attention(in.q, in.k, in.v);
    AttentionCall call = call_of(c, in, added);
    call.k = TensorView{};
    call.v = TensorView{};
    patch.add_image_attention(call);
    CHECK(rel_l2(added, expected) <= 1e-5);
  }
}

TEST_CASE("tokens, sigma ranges and activity of stacked identities", "[patch][sigma]") {
  const InstantIDModel& model = golden_model();
  const test::AttentionCase* gated = nullptr;
  for (const auto& c : test::kAttentionCases)
    if (std::string(c.name) == "gated_one") gated = &c;
  REQUIRE(gated != nullptr);
  AttentionPatch patch = patch_of(model, *gated);
  CHECK(rel_l2(patch.tokens(0).cond, goldens().f32("proj.avg.cond")) <= 1e-5);
  CHECK(rel_l2(patch.tokens(1).uncond, goldens().f32("proj.single.uncond")) <= 1e-5);
  const double mid = DiscreteSchedule().percent_to_sigma(0.5f);
  CHECK(patch.sigma_range(0).start == kNoSigma);
  CHECK(patch.sigma_range(0).end == mid);
  CHECK(patch.sigma_range(1).start == mid);
  CHECK(patch.sigma_range(1).end == 0.0);
  CHECK(patch.active_at(0.5));
  CHECK(patch.active_at(100.0));
  CHECK_THROWS_WITH(patch.tokens(2), "AttentionPatch::tokens identity: got 2, expected 0..1");

  // weight 0 disables an identity: text attention only, bit for bit.
  PatchOptions off;
  off.weight = 0.0f;
  AttentionPatch zero(model, test::projection_embeds(test::projection_case("avg")), off);
  CHECK_FALSE(zero.active_at(1.0));
  test::CaseInputs in = test::case_inputs(*gated, width_of(*gated));
  HostTensor out(in.q.shape());
  zero.attention(call_of(*gated, in, out));
  const HostTensor text = ref::attention(in.q, in.k, in.v);
  CHECK(std::memcmp(out.data(), text.data(),
                    sizeof(float) * static_cast<std::size_t>(out.numel())) == 0);

  // An explicit sigma range (other schedules) replaces start_at/end_at.
  PatchOptions explicit_range;
  explicit_range.sigma_range = SigmaRange{2.0, 1.0};
  AttentionPatch ranged(model, test::projection_embeds(test::projection_case("avg")),
                        explicit_range);
  CHECK(ranged.active_at(1.5));
  CHECK_FALSE(ranged.active_at(2.5));
  CHECK_FALSE(ranged.active_at(kNoSigma));
}

// Copies a float32 tensor into a buffer of another dtype.
std::vector<std::uint16_t> to_half(const HostTensor& t, DType dtype) {
  std::vector<std::uint16_t> out(static_cast<std::size_t>(t.numel()));
  for (std::int64_t i = 0; i < t.numel(); ++i) store_from_float(out.data(), dtype, i, t.data()[i]);
  return out;
}

TEST_CASE("f16 and bf16 tensors are computed in float32 and written back in out's dtype",
          "[patch][dtype]") {
  const InstantIDModel& model = golden_model();
  const test::AttentionCase& c = test::kAttentionCases.at(6);  // mask_m1_pad: P = 2, mask
  REQUIRE(std::string(c.name) == "mask_m1_pad");
  AttentionPatch patch = patch_of(model, c);
  test::CaseInputs in = test::case_inputs(c, width_of(c));
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    INFO("dtype " << dtype_name(dtype));
    std::vector<std::uint16_t> q = to_half(in.q, dtype), k = to_half(in.k, dtype),
                               v = to_half(in.v, dtype);
    std::vector<std::uint16_t> out(q.size(), 0x7e00);  // NaN in f16, a NaN-ish pattern in bf16
    AttentionCall call = call_of(c, in, in.q);         // shapes and ids; views replaced below
    call.q = TensorView::contiguous(q.data(), dtype, Device{}, in.q.shape());
    call.k = TensorView::contiguous(k.data(), dtype, Device{}, in.k.shape());
    call.v = TensorView::contiguous(v.data(), dtype, Device{}, in.v.shape());
    call.out = TensorView::contiguous(out.data(), dtype, Device{}, in.q.shape());
    patch.attention(call);
    // The float32 patch on the same rounded inputs, rounded once to the output dtype.
    test::CaseInputs rounded{HostTensor::from_view(call.q), HostTensor::from_view(call.k),
                             HostTensor::from_view(call.v)};
    HostTensor expected(in.q.shape());
    patch.attention(call_of(c, rounded, expected));
    HostTensor got = HostTensor::from_view(call.out);
    for (std::int64_t i = 0; i < got.numel(); ++i) {
      REQUIRE(load_as_float(out.data(), dtype, i) ==
              load_as_float(to_half(expected, dtype).data(), dtype, i));
    }
    CHECK(rel_l2(got, goldens().f32("case.mask_m1_pad.out")) <=
          (dtype == DType::kF16 ? 2e-3 : 1.5e-2));
  }
}

TEST_CASE("strided q/k/v/out views give the same result as contiguous ones", "[patch][strides]") {
  const InstantIDModel& model = golden_model();
  const test::AttentionCase& c = test::kAttentionCases.at(0);
  AttentionPatch patch = patch_of(model, c);
  test::CaseInputs in = test::case_inputs(c, width_of(c));
  HostTensor expected(in.q.shape());
  patch.attention(call_of(c, in, expected));
  // q and out live inside [B, N, 2C] buffers (every other channel block), k/v broadcast-free
  // copies.
  const std::int64_t b = in.q.size(0), n = in.q.size(1), ch = in.q.size(2);
  HostTensor q_wide({b, n, 2 * ch}, 7.0f), out_wide({b, n, 2 * ch}, -3.0f);
  for (std::int64_t i = 0; i < b * n; ++i)
    std::copy(in.q.data() + i * ch, in.q.data() + (i + 1) * ch, q_wide.data() + i * 2 * ch);
  AttentionCall call = call_of(c, in, expected);
  call.q = q_wide.view();
  call.q.shape[2] = ch;
  call.out = out_wide.view();
  call.out.shape[2] = ch;
  patch.attention(call);
  for (std::int64_t i = 0; i < b * n; ++i) {
    for (std::int64_t j = 0; j < ch; ++j) {
      REQUIRE(out_wide.data()[i * 2 * ch + j] == expected.data()[i * ch + j]);
      REQUIRE(out_wide.data()[i * 2 * ch + ch + j] == -3.0f);  // untouched
    }
  }
}

TEST_CASE("every bad argument is refused before anything is written", "[patch][errors]") {
  const InstantIDModel& model = golden_model();
  PatchOptions masked;
  masked.mask = test::golden_mask("m1");
  AttentionPatch patch(model, test::projection_embeds(test::projection_case("avg")), masked);
  const LayerId layer{BlockType::kInput, 4, 0};  // width 64
  HostTensor q({4, 24, 64}, 0.5f), k({4, 77, 64}, 0.25f), v({4, 77, 64}, 0.125f);
  HostTensor out({4, 24, 64}, 9.0f);
  const int cou[] = {1, 0};
  auto good = [&] {
    AttentionCall call;
    call.q = q.view();
    call.k = k.view();
    call.v = v.view();
    call.out = out.view();
    call.layer = layer;
    call.sigma = 3.0;
    call.cond_or_uncond = cou;
    call.num_chunks = 2;
    call.original_height = 96;
    call.original_width = 64;
    return call;
  };
  auto untouched = [&] {
    for (float x : out.values())
      if (x != 9.0f) return false;
    return true;
  };
  const std::string at = "attention at layer input 4.0: ";
  HostTensor q2({24, 64}), q128({4, 24, 128}), k128({4, 77, 128}), k3({3, 77, 64}),
      v76({4, 76, 64}), out_wrong({4, 25, 64});
  std::vector<std::uint16_t> k16(static_cast<std::size_t>(k.numel())),
      out16(static_cast<std::size_t>(out.numel()));
  const int cou_bad[] = {1, 2};
  const int cou3[] = {0, 1, 0};

  struct Bad {
    const char* message;
    std::function<void(AttentionCall&)> edit;
  };
  const std::vector<Bad> bad = {
      {"q rank: got 2 (shape [24, 64]), expected 3 ([B, tokens, C])",
       [&](AttentionCall& c) { c.q = q2.view(); }},
      {"q channels: got 128, expected 64 (the layer's width C = heads x 64)",
       [&](AttentionCall& c) { c.q = q128.view(); }},
      {"k channels: got 128, expected 64 (the layer's width)",
       [&](AttentionCall& c) {
         c.k = k128.view();
         c.v = k128.view();
       }},
      {"k batch: got 3, expected 4 (q's batch) or 1",
       [&](AttentionCall& c) {
         c.k = k3.view();
         c.v = k3.view();
       }},
      {"v shape: got [4, 76, 64], expected [4, 77, 64] (k's shape)",
       [&](AttentionCall& c) { c.v = v76.view(); }},
      {"out shape: got [4, 25, 64], expected [4, 24, 64] (q's shape)",
       [&](AttentionCall& c) { c.out = out_wrong.view(); }},
      {"out dtype: got f16, expected f32 (q's dtype)",
       [&](AttentionCall& c) {
         c.out = TensorView::contiguous(out16.data(), DType::kF16, Device{}, out.shape());
       }},
      {"k dtype: got bf16, expected f32 (q's dtype)",
       [&](AttentionCall& c) {
         c.k = TensorView::contiguous(k16.data(), DType::kBF16, Device{}, k.shape());
       }},
      {"q device: got cuda:0, expected cpu (the cpu backend's device)",
       [&](AttentionCall& c) {
         c.q.device = Device{DeviceType::kCuda, 0};
       }},
      {"v data: got a null pointer for shape [4, 77, 64], expected memory",
       [&](AttentionCall& c) { c.v.data = nullptr; }},
      {"q shape: got [4, 0, 64], expected non-empty dimensions",
       [&](AttentionCall& c) { c.q.shape[1] = 0; }},
      {"cond_or_uncond[1]: got 2, expected 0 (cond) or 1 (uncond)",
       [&](AttentionCall& c) { c.cond_or_uncond = cou_bad; }},
      {"batch: got 4, expected a multiple of the 3 cond_or_uncond chunks (B = G x P)",
       [&](AttentionCall& c) {
         c.cond_or_uncond = cou3;
         c.num_chunks = 3;
       }},
      {"cond_or_uncond: got a null pointer with num_chunks 2, expected num_chunks entries",
       [&](AttentionCall& c) { c.cond_or_uncond = nullptr; }},
      {"num_chunks: got 0, expected >= 1 with a cond_or_uncond array",
       [&](AttentionCall& c) { c.num_chunks = 0; }},
      {"sigma: got NaN, expected a number or no sigma",
       [&](AttentionCall& c) { c.sigma = std::nan(""); }},
      {"original size: got 0x64, expected the positive latent height and width (an active "
       "identity has a mask)",
       [&](AttentionCall& c) { c.original_height = 0; }},
  };
  for (const Bad& b : bad) {
    INFO(b.message);
    AttentionCall call = good();
    b.edit(call);
    REQUIRE_THROWS_WITH(patch.attention(call), at + b.message);
    REQUIRE(untouched());
  }
  {
    AttentionCall call = good();
    call.layer = LayerId{BlockType::kMiddle, 1, 0};
    REQUIRE_THROWS_WITH(patch.attention(call),
                        "layer identity: got middle 1.0, expected one of the layout's 70 layers "
                        "(SDXL: input 4-5, 7-8; output 0-5; middle 0)");
    call = good();
    call.original_height = 1;
    call.original_width = 64;
    REQUIRE_THROWS_WITH(patch.attention(call), Catch::Contains("got int(mask_h) = 0"));
    REQUIRE(untouched());
  }
  // add_image_attention checks the same things except k/v, which it does not read.
  {
    AttentionCall call = good();
    call.k = TensorView{};
    call.v = TensorView{};
    call.out = out_wrong.view();
    REQUIRE_THROWS_WITH(patch.add_image_attention(call),
                        "add_image_attention at layer input 4.0: out shape: got [4, 25, 64], "
                        "expected [4, 24, 64] (q's shape)");
  }
  // The mask needs no original size while its identity is inactive.
  {
    AttentionCall call = good();
    call.original_height = 0;
    call.original_width = 0;
    PatchOptions late = masked;
    late.start_at = 0.9f;
    AttentionPatch inactive(model, test::projection_embeds(test::projection_case("avg")), late);
    REQUIRE_NOTHROW(inactive.attention(call));
    const HostTensor text = ref::attention(q, k, v);
    REQUIRE(rel_l2(out, text) == 0.0);
  }
}

TEST_CASE("construction and stacking validate options, embeddings, tokens and models",
          "[patch][errors]") {
  const InstantIDModel& model = golden_model();
  const HostTensor embeds = test::projection_embeds(test::projection_case("avg"));
  PatchOptions o;
  o.weight = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(AttentionPatch(model, embeds, o),
                    "PatchOptions.weight: got inf, expected a finite value");
  CHECK_THROWS_WITH(AttentionPatch(model, HostTensor({2, 512}), PatchOptions{}),
                    "AttentionPatch face_embeds: got [2, 512], expected [N, 64] or [N, 1, 64] with "
                    "N >= 1");
  HostTensor nan_embeds = embeds;
  nan_embeds.data()[5] = std::nanf("");
  CHECK_THROWS_WITH(AttentionPatch(model, nan_embeds, PatchOptions{}),
                    "AttentionPatch face_embeds value at flat index 5: got nan, expected a finite "
                    "value");
  ImageTokens tokens{HostTensor({1, 16, 31}), HostTensor({1, 16, 31}), {}};
  CHECK_THROWS_WITH(AttentionPatch(model, tokens, PatchOptions{}),
                    "AttentionPatch tokens.cond: got [1, 16, 31], expected [1, T, 32] (D_out of "
                    "the model)");
  tokens = ImageTokens{HostTensor({1, 16, 32}), HostTensor({1, 32, 32}), {}};
  CHECK_THROWS_WITH(AttentionPatch(model, tokens, PatchOptions{}),
                    "AttentionPatch tokens.uncond: got [1, 32, 32], expected [1, 16, 32] (the "
                    "shape of tokens.cond)");

  AttentionPatch patch(model, embeds, PatchOptions{});
  // A model of another layout cannot be stacked.
  std::map<std::string, HostTensor> tensors = model.tensors();
  ModelLayout other = test::golden_layout();
  other.layers.pop_back();
  tensors.erase("ip_adapter.139.to_k_ip.weight");
  tensors.erase("ip_adapter.139.to_v_ip.weight");
  const InstantIDModel small = InstantIDModel::from_tensors(tensors, other, "small");
  CHECK_THROWS_WITH(patch.stack(small, embeds, PatchOptions{}),
                    "AttentionPatch::stack model small: got 69 layers, D_out 32, expected the "
                    "patch's layout (70 layers, same widths) and D_out 32");
  CHECK(patch.num_identities() == 1);

  // A layout whose layer width is not a multiple of the head size 64 is refused at the call.
  {
    std::map<std::string, HostTensor> odd_tensors = model.tensors();
    ModelLayout odd = test::golden_layout();
    odd.layers[0].width = 96;
    odd_tensors["ip_adapter.1.to_k_ip.weight"] = HostTensor({96, 32}, 0.01f);
    odd_tensors["ip_adapter.1.to_v_ip.weight"] = HostTensor({96, 32}, 0.01f);
    const InstantIDModel odd_model = InstantIDModel::from_tensors(odd_tensors, odd, "odd");
    AttentionPatch odd_patch(odd_model, embeds, PatchOptions{});
    HostTensor q({1, 4, 96}), k({1, 3, 96}), v({1, 3, 96}), out({1, 4, 96});
    AttentionCall call{q.view(), k.view(), v.view(), out.view(), odd.layers[0].id, 1.0,
                       nullptr,  0,        0,        0,          nullptr};
    CHECK_THROWS_WITH(
        odd_patch.attention(call),
        "attention at layer input 4.0: layer width: got 96, expected a multiple of 64");
  }

  if (!cuda_available()) {
    BackendOptions cuda;
    cuda.backend = Backend::kCuda;
    CHECK_THROWS_AS(AttentionPatch(model, embeds, PatchOptions{}, cuda), Error);
  }
  CHECK_THROWS_WITH(patch.prepare_resolution(0, 8),
                    "prepare_resolution: got 0x8, expected a positive latent height and width");
}

TEST_CASE("unreached layers: a host that registers the middle block as (middle, 1)",
          "[patch][bookkeeping]") {
  const InstantIDModel& model = golden_model();
  AttentionPatch patch(model, test::projection_embeds(test::projection_case("avg")),
                       PatchOptions{});
  // The host keeps patches keyed the way ApplyInstantID registers them ...
  std::vector<LayerId> registered;
  for (const LayerInfo& l : patch.layout().layers) {
    LayerId id = l.id;
    if (id.block == BlockType::kMiddle) id.block_id = 1;
    registered.push_back(id);
  }
  // ... while its UNet reports ("middle", 0): those calls never find their patch.
  auto run_step = [&](const std::vector<LayerId>& keys) {
    patch.begin_step();
    for (const LayerInfo& l : patch.layout().layers) {
      bool found = false;
      for (const LayerId& key : keys) found = found || key == l.id;
      if (!found) continue;
      HostTensor q({2, 4, l.width}, 0.1f), k({2, 3, l.width}, 0.2f), v({2, 3, l.width}, 0.3f);
      HostTensor out(q.shape());
      const int cou[] = {1, 0};
      AttentionCall call{q.view(), k.view(), v.view(), out.view(), l.id,   1.0,
                         cou,      2,        0,        0,          nullptr};
      patch.attention(call);
    }
  };
  CHECK(patch.unreached_layers().size() == 70);  // nothing called yet
  run_step(registered);
  const std::vector<LayerId> missed = patch.unreached_layers();
  REQUIRE(missed.size() == 10);
  for (int t = 0; t < 10; ++t)
    CHECK(missed[static_cast<std::size_t>(t)] == (LayerId{BlockType::kMiddle, 0, t}));
  // Registered correctly, every layer is reached; begin_step() starts the count again.
  std::vector<LayerId> all;
  for (const LayerInfo& l : patch.layout().layers) all.push_back(l.id);
  run_step(all);
  CHECK(patch.unreached_layers().empty());
  patch.begin_step();
  CHECK(patch.unreached_layers().size() == 70);
}

}  // namespace
}  // namespace instantid
