// The AttentionPatch API under hostile arguments: NaN in every input it owns (embeddings, tokens,
// weights, masks, options) is refused; NaN in the per-step q/k/v is not scanned for (the per-step
// call is the hot path and must stay capturable) — these tests pin exactly how far it spreads.
// Shapes whose element count cannot be indexed are refused, and the host's `out` buffer is
// untouched whenever a call fails validation.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "instantid/error.hpp"
#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "support/refusal.hpp"

using instantid::test::refusal;

namespace {

using instantid::AttentionCall;
using instantid::AttentionPatch;
using instantid::BlockType;
using instantid::HostTensor;
using instantid::InstantIDModel;
using instantid::LayerId;
using instantid::ModelLayout;
using instantid::PatchOptions;
using Catch::Matchers::Contains;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A small deterministic value in [-0.5, 0.5).
float value_at(std::uint64_t i, std::uint64_t salt) {
  std::uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ salt;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return static_cast<float>(x % 1000) / 1000.0f - 0.5f;
}

HostTensor filled(std::vector<std::int64_t> shape, std::uint64_t salt, float scale = 0.1f) {
  HostTensor t(std::move(shape));
  for (std::int64_t i = 0; i < t.numel(); ++i)
    t.values()[static_cast<std::size_t>(i)] = scale * value_at(static_cast<std::uint64_t>(i), salt);
  return t;
}

// A reduced layout (widths 64 / 128, Resampler 64 wide, one head, embeddings of 8).
const ModelLayout& layout() {
  static const ModelLayout l = ModelLayout::reduced(10, 8, 64, 1);
  return l;
}

std::map<std::string, HostTensor> model_tensors() {
  return InstantIDModel::synthetic_tensors(layout(), 64, 1);
}

const InstantIDModel& model() {
  static const InstantIDModel m = InstantIDModel::from_tensors(model_tensors(), layout());
  return m;
}

HostTensor embeds() { return filled({2, 8}, 99, 1.0f); }

constexpr LayerId kLayer{BlockType::kInput, 4, 0};  // width 64 in the reduced layout
constexpr std::int64_t kB = 2, kN = 16, kL = 5, kC = 64;

struct Buffers {
  HostTensor q = filled({kB, kN, kC}, 11, 1.0f);
  HostTensor k = filled({kB, kL, kC}, 12, 1.0f);
  HostTensor v = filled({kB, kL, kC}, 13, 1.0f);
  HostTensor out = HostTensor({kB, kN, kC}, 0.0f);
  int cond_or_uncond[2] = {0, 1};

  AttentionCall call() {
    AttentionCall c;
    c.q = q.view();
    c.k = k.view();
    c.v = v.view();
    c.out = out.view();
    c.layer = kLayer;
    c.cond_or_uncond = cond_or_uncond;
    c.num_chunks = 2;
    return c;
  }
};

bool row_finite(const HostTensor& t, std::int64_t b, std::int64_t n) {
  for (std::int64_t c = 0; c < kC; ++c)
    if (!std::isfinite(t.values()[static_cast<std::size_t>((b * kN + n) * kC + c)])) return false;
  return true;
}

}  // namespace

TEST_CASE("patch: NaN in what the patch owns is refused with its name", "[hostile]") {
  SECTION("a model weight") {
    auto tensors = model_tensors();
    tensors.at("image_proj.proj_in.weight").values()[3] = kNaN;
    CHECK_THAT(refusal([&] { InstantIDModel::from_tensors(tensors, layout()); }),
               Contains("image_proj.proj_in.weight"));
  }
  SECTION("a face embedding") {
    HostTensor e = embeds();
    e.values()[9] = kNaN;
    CHECK_THAT(refusal([&] { AttentionPatch(model(), e, PatchOptions{}); }),
               Contains("face_embeds") && Contains("9"));
  }
  SECTION("an infinite face embedding") {
    HostTensor e = embeds();
    e.values()[0] = -std::numeric_limits<float>::infinity();
    CHECK_THAT(refusal([&] { AttentionPatch(model(), e, PatchOptions{}); }),
               Contains("face_embeds"));
  }
  SECTION("projected tokens") {
    const AttentionPatch good(model(), embeds(), PatchOptions{});
    instantid::ImageTokens tokens = good.tokens(0);
    tokens.uncond.values()[7] = kNaN;
    CHECK_THAT(refusal([&] { AttentionPatch(model(), tokens, PatchOptions{}); }),
               Contains("uncond"));
  }
  SECTION("a mask value") {
    PatchOptions o;
    o.mask = HostTensor({1, 4, 4}, 0.5f);
    o.mask->values()[5] = kNaN;
    CHECK_THAT(refusal([&] { AttentionPatch(model(), embeds(), o); }),
               Contains("PatchOptions.mask") && Contains("5"));
  }
  SECTION("options") {
    PatchOptions o;
    o.start_at = kNaN;
    CHECK_THAT(refusal([&] { AttentionPatch(model(), embeds(), o); }),
               Contains("PatchOptions.start_at"));
    o = PatchOptions{};
    o.noise = std::numeric_limits<float>::infinity();
    CHECK_THAT(refusal([&] { AttentionPatch(model(), embeds(), o); }),
               Contains("PatchOptions.noise"));
  }
}

TEST_CASE("patch: NaN in a per-step q/k/v is not scanned for; it stays where it lands",
          "[hostile]") {
  AttentionPatch patch(model(), embeds(), PatchOptions{});
  SECTION("control: finite in, finite out") {
    Buffers buf;
    patch.attention(buf.call());
    for (std::int64_t b = 0; b < kB; ++b)
      for (std::int64_t n = 0; n < kN; ++n) CHECK(row_finite(buf.out, b, n));
  }
  SECTION("NaN in one query row: that output row only") {
    Buffers buf;
    buf.q.values()[static_cast<std::size_t>((1 * kN + 3) * kC + 7)] = kNaN;
    patch.attention(buf.call());
    for (std::int64_t b = 0; b < kB; ++b)
      for (std::int64_t n = 0; n < kN; ++n) CHECK(row_finite(buf.out, b, n) == !(b == 1 && n == 3));
  }
  SECTION("NaN in one text key: every row of that image, no other image") {
    Buffers buf;
    buf.k.values()[static_cast<std::size_t>((0 * kL + 2) * kC + 1)] = kNaN;
    patch.attention(buf.call());
    for (std::int64_t n = 0; n < kN; ++n) {
      CHECK_FALSE(row_finite(buf.out, 0, n));
      CHECK(row_finite(buf.out, 1, n));
    }
  }
}

TEST_CASE("patch: shapes whose element count overflows are refused, out untouched",
          "[hostile]") {
  AttentionPatch patch(model(), embeds(), PatchOptions{});
  Buffers buf;
  std::vector<float> poison(buf.out.values().size());
  for (std::size_t i = 0; i < poison.size(); ++i) poison[i] = value_at(i, 7);
  buf.out.values() = poison;
  AttentionCall call = buf.call();
  // A view claiming 2^62 images: B·N·C overflows int64 and no host holds that memory.
  const std::int64_t huge = std::int64_t{1} << 62;
  call.q.shape[0] = huge;
  call.out.shape[0] = huge;
  call.k.shape[0] = 1;
  call.v.shape[0] = 1;
  const std::string message = refusal([&] { patch.attention(call); });
  CHECK_THAT(message, Contains("q shape") && Contains("fits in int64"));
  CHECK(std::memcmp(buf.out.data(), poison.data(), poison.size() * sizeof(float)) == 0);
}

TEST_CASE("patch: a failed call leaves the host's out buffer untouched", "[hostile]") {
  AttentionPatch patch(model(), embeds(), PatchOptions{});
  Buffers buf;
  std::vector<float> poison(buf.out.values().size(), kNaN);
  for (std::size_t i = 0; i < poison.size(); i += 3) poison[i] = value_at(i, 5);
  static const int kBadFlags[2] = {0, 7};
  struct Bad {
    const char* what;
    bool reads_text;  // add_image_attention does not read k/v, so cannot fail on them
    void (*edit)(AttentionCall&);
  };
  const Bad bad[] = {
      {"unknown layer", false,
       [](AttentionCall& c) { c.layer = LayerId{BlockType::kMiddle, 1, 0}; }},
      {"wrong width", false, [](AttentionCall& c) { c.q.shape[2] = 128; }},
      {"k batch", true, [](AttentionCall& c) { c.k.shape[0] = 3; }},
      {"NaN sigma", false, [](AttentionCall& c) { c.sigma = std::nan(""); }},
      {"chunk flag", false, [](AttentionCall& c) { c.cond_or_uncond = kBadFlags; }},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    buf.out.values() = poison;
    AttentionCall call = buf.call();
    b.edit(call);
    CHECK_FALSE(refusal([&] { patch.attention(call); }).empty());
    if (!b.reads_text) CHECK_FALSE(refusal([&] { patch.add_image_attention(call); }).empty());
    CHECK(std::memcmp(buf.out.data(), poison.data(), poison.size() * sizeof(float)) == 0);
  }
}
