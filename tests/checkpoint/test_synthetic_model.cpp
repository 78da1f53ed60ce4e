// InstantIDModel::synthetic / synthetic_tensors: the one generator of random InstantID weights
// used by the demo, the tests and the benchmarks. Checked: names and shapes from expected_shapes,
// determinism per seed, the documented scales, a few values against an independent Python
// implementation, and that the weights pass from_tensors' and load()'s validation.

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint_writers.hpp"
#include "instantid/error.hpp"
#include "instantid/model.hpp"

using namespace instantid;
using namespace instantid::test;

namespace {

using Tensors = std::map<std::string, HostTensor>;

constexpr int kDOut = 96;

ModelLayout small_layout() { return ModelLayout::reduced(10, 64, 128, 2); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * 4) == 0;
}

// Fraction of positions where two equally shaped tensors differ.
double fraction_different(const HostTensor& a, const HostTensor& b) {
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) differ += a.data()[i] != b.data()[i] ? 1 : 0;
  return static_cast<double>(differ) / static_cast<double>(a.numel());
}

}  // namespace

TEST_CASE("synthetic_tensors: every tensor of expected_shapes, nothing else", "[checkpoint][synthetic]") {
  for (const ModelLayout& layout : {small_layout(), ModelLayout::reduced(10, 8, 64, 1)}) {
    const auto expected = InstantIDModel::expected_shapes(layout, kDOut);
    const Tensors t = InstantIDModel::synthetic_tensors(layout, kDOut, 42);
    REQUIRE(t.size() == expected.size());
    for (const auto& [name, shape] : expected) {
      INFO(name);
      REQUIRE(t.count(name) == 1);
      CHECK(t.at(name).shape() == shape);
    }
  }
}

TEST_CASE("synthetic_tensors: deterministic for a seed, different for another", "[checkpoint][synthetic]") {
  const Tensors a = InstantIDModel::synthetic_tensors(small_layout(), kDOut, 42);
  const Tensors b = InstantIDModel::synthetic_tensors(small_layout(), kDOut, 42);
  const Tensors c = InstantIDModel::synthetic_tensors(small_layout(), kDOut, 43);
  for (const auto& [name, t] : a) {
    INFO(name);
    CHECK(same_bits(t, b.at(name)));
    CHECK(fraction_different(t, c.at(name)) > 0.9);
  }
  // Tensors of one model are independent streams, not copies of each other.
  CHECK(fraction_different(a.at("ip_adapter.1.to_k_ip.weight"),
                           a.at("ip_adapter.1.to_v_ip.weight")) > 0.9);
  CHECK(fraction_different(a.at("image_proj.layers.0.0.to_q.weight"),
                           a.at("image_proj.layers.1.0.to_q.weight")) > 0.9);
}

TEST_CASE("synthetic_tensors: the documented scales", "[checkpoint][synthetic]") {
  // SDXL's Resampler width and D_out with reduced layer widths (the SDXL model is 1.4 GB).
  const ModelLayout layout = ModelLayout::reduced(10, 512, 1280, 20);
  const Tensors tensors = InstantIDModel::synthetic_tensors(layout, 2048, 7);
  int linear = 0, biases = 0, norms = 0, latents = 0;
  for (const auto& [name, t] : tensors) {
    INFO(name);
    float lo = 0, hi = 0, scale = 1, offset = 0;
    if (t.shape().size() == 2) {
      scale = 1.0f / std::sqrt(static_cast<float>(t.shape()[1]));
      ++linear;
    } else if (t.shape().size() == 1 && ends_with(name, ".bias")) {
      scale = 0.02f;
      ++biases;
    } else if (t.shape().size() == 1) {
      scale = 0.1f;
      offset = 1.0f;
      ++norms;
    } else {
      REQUIRE(name == "image_proj.latents");
      ++latents;
    }
    double sum = 0, sum2 = 0;
    std::int64_t non_finite = 0;
    lo = hi = t.data()[0];
    for (float x : t.values()) {
      non_finite += std::isfinite(x) ? 0 : 1;
      lo = std::min(lo, x);
      hi = std::max(hi, x);
      sum += x - offset;
      sum2 += static_cast<double>(x - offset) * (x - offset);
    }
    CHECK(non_finite == 0);
    const double n = static_cast<double>(t.numel());
    // Inside offset ± scale (one float ulp of slack for offset + scale·u rounding) ...
    CHECK(lo >= offset - scale * (1 + 1e-6f));
    CHECK(hi <= offset + scale * (1 + 1e-6f));
    // ... and filling it: uniform, mean ~offset, variance scale²/3.
    if (n >= 4000) {  // the bounds below are > 5 standard deviations of the estimates
      CHECK(hi - lo > 1.99f * scale);
      CHECK(std::abs(sum / n) < 0.1 * scale);
      CHECK(sum2 / n == Approx(scale * scale / 3.0).epsilon(0.1));
    }
  }
  CHECK(latents == 1);
  // proj_in/out, 5 per perceiver layer, k and v per UNet layer; 3 biases and 3 norm weights per
  // perceiver layer plus proj_in.bias, proj_out.bias, norm_out.bias and norm_out.weight.
  CHECK(linear == 2 + 5 * layout.depth + 2 * 70);
  CHECK(biases == 3 + 3 * layout.depth);
  CHECK(norms == 1 + 3 * layout.depth);
}

TEST_CASE("synthetic_tensors: values match an independent implementation", "[checkpoint][synthetic]") {
  // splitmix64 over FNV-1a(name) ^ seed, written separately in Python/numpy float32
  // (seed 42, layout reduced(10, 64, 128, 2), D_out 96).
  const Tensors t = InstantIDModel::synthetic_tensors(small_layout(), kDOut, 42);
  struct Expect {
    const char* name;
    float values[3];
  };
  const Expect expect[] = {
      {"image_proj.latents", {-0.761367559f, -0.370944738f, -0.684598446f}},
      {"image_proj.proj_in.bias", {0.0166697279f, 0.00297017815f, 0.0109214308f}},
      {"image_proj.layers.1.0.norm2.weight", {1.02370071f, 1.03749895f, 0.980505824f}},
      {"ip_adapter.3.to_v_ip.weight", {-0.0392998941f, 0.032279864f, 0.0716044828f}},
  };
  for (const Expect& e : expect) {
    INFO(e.name);
    for (int i = 0; i < 3; ++i) CHECK(t.at(e.name).data()[i] == Approx(e.values[i]).epsilon(1e-6));
  }
}

TEST_CASE("synthetic_tensors: a layout without layers gives the same Resampler", "[checkpoint][synthetic]") {
  ModelLayout resampler_only = small_layout();
  resampler_only.layers.clear();
  const Tensors full = InstantIDModel::synthetic_tensors(small_layout(), kDOut, 5);
  const Tensors part = InstantIDModel::synthetic_tensors(resampler_only, kDOut, 5);
  REQUIRE(part.size() == 7 + 11 * static_cast<std::size_t>(resampler_only.depth));
  for (const auto& [name, t] : part) {
    INFO(name);
    CHECK(name.rfind("image_proj.", 0) == 0);
    REQUIRE(full.count(name) == 1);
    CHECK(same_bits(t, full.at(name)));
  }
  // It is still a valid model of that layout (D_out read from proj_out).
  const InstantIDModel model = InstantIDModel::synthetic(resampler_only, kDOut, 5);
  CHECK(model.output_dim() == kDOut);
}

TEST_CASE("synthetic: a validated model, the same weights after a safetensors round trip",
          "[checkpoint][synthetic]") {
  const ModelLayout layout = small_layout();
  const InstantIDModel model = InstantIDModel::synthetic(layout, kDOut, 42);
  CHECK(model.output_dim() == kDOut);
  CHECK(model.source().find("synthetic") != std::string::npos);
  CHECK(model.source().find("seed 42") != std::string::npos);
  const Tensors raw = InstantIDModel::synthetic_tensors(layout, kDOut, 42);
  REQUIRE(model.tensors().size() == raw.size());
  for (const auto& [name, t] : raw) CHECK(same_bits(model.tensor(name), t));
  REQUIRE_NOTHROW(InstantIDModel::from_tensors(raw, layout));

  std::vector<SafetensorsItem> items;
  for (const auto& [name, t] : raw) {
    Bytes data(static_cast<std::size_t>(t.numel()) * 4);
    std::memcpy(data.data(), t.data(), data.size());
    items.push_back({name, "F32", t.shape(), std::move(data)});
  }
  const Bytes file = make_safetensors(items);
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("instantid_synthetic_" + std::to_string(::getpid()) + ".safetensors");
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
  InstantIDModel loaded = InstantIDModel::synthetic(ModelLayout::reduced(10, 8, 64, 1), 32, 1);
  std::string error;
  try {
    loaded = InstantIDModel::load(path.string(), layout);
  } catch (const Error& e) {
    error = e.what();
  }
  std::error_code ec;
  std::filesystem::remove(path, ec);
  INFO(error);
  REQUIRE(error.empty());
  CHECK(loaded.output_dim() == kDOut);
  for (const auto& [name, t] : raw) CHECK(same_bits(loaded.tensor(name), t));
}

TEST_CASE("synthetic_tensors: D_out must be positive", "[checkpoint][synthetic]") {
  for (int d_out : {0, -4}) {
    REQUIRE_THROWS_WITH(InstantIDModel::synthetic_tensors(small_layout(), d_out, 1),
                        Catch::Contains("output_dim") &&
                            Catch::Contains("got " + std::to_string(d_out)) &&
                            Catch::Contains("expected > 0"));
  }
}
