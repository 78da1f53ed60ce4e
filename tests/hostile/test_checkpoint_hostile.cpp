// Checkpoint files that lie: absurd element counts, offsets past the end, headers that claim more
// than the file holds, pickles nesting a million deep, zip entries larger than the archive, and
// NaN/Inf weights. Each must be refused with an Error that says what was wrong — and, where a size
// is the lie, before anything of that size is allocated (AllocProbe).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "alloc_probe.hpp"
#include "formats.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"
#include "instantid/model.hpp"
#include "support/refusal.hpp"

namespace fmt = instantid::test::formats;
using Catch::Matchers::Contains;
using instantid::ByteSpan;
using instantid::test::AllocProbe;

using instantid::test::refusal;

namespace {

constexpr std::size_t kSmallAllocation = 1 << 20;  // far below any size the inputs claim

ByteSpan span(const std::string& bytes) {
  return {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()};
}

}  // namespace

TEST_CASE("safetensors: a tensor of 10^12 elements is refused before allocation", "[hostile]") {
  const std::string file = fmt::safetensors_raw(
      R"({"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}})",
      std::string(16, '\0'));
  AllocProbe probe;
  const std::string message = refusal([&] { instantid::parse_safetensors(span(file)); });
  CHECK(probe.largest() < kSmallAllocation);
  CHECK_THAT(message, Contains("\"w\"") && Contains("max_tensor_elements"));
}

TEST_CASE("safetensors: shapes whose product overflows 64 bits are refused", "[hostile]") {
  const std::string file = fmt::safetensors_raw(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}})",
      "");
  CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file)); }),
             Contains("\"w\"") && Contains("max_tensor_elements"));
}

TEST_CASE("safetensors: offsets past the end of the file are refused", "[hostile]") {
  const std::string file = fmt::safetensors_raw(
      R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'));
  CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file)); }),
             Contains("\"w\"") && Contains("out of range"));
}

TEST_CASE("safetensors: a header length past the end of the file is refused", "[hostile]") {
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  SECTION("just past the end") {
    const std::string file = fmt::safetensors_raw(header, std::string(4, '\0'), header.size() + 5);
    CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file)); }),
               Contains("past the end"));
  }
  SECTION("2^63 bytes, before allocation") {
    const std::string file = fmt::safetensors_raw(header, "", std::uint64_t{1} << 63);
    AllocProbe probe;
    CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file)); }),
               Contains("max_header_bytes"));
    CHECK(probe.largest() < kSmallAllocation);
  }
}

TEST_CASE("safetensors: the reader limits are configurable", "[hostile]") {
  const std::string file =
      fmt::safetensors({{"a", "F32", {2, 3}, fmt::float_bytes(std::vector<float>(6, 1.0f))}});
  REQUIRE_NOTHROW(instantid::parse_safetensors(span(file)));
  instantid::ReaderLimits limits;
  SECTION("max_tensor_elements") {
    limits.max_tensor_elements = 5;
    CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file), limits); }),
               Contains("max_tensor_elements = 5"));
  }
  SECTION("max_ndim") {
    limits.max_ndim = 1;
    CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file), limits); }),
               Contains("max_ndim = 1"));
  }
  SECTION("max_header_bytes") {
    limits.max_header_bytes = 16;
    CHECK_THAT(refusal([&] { instantid::parse_safetensors(span(file), limits); }),
               Contains("max_header_bytes = 16"));
  }
}

TEST_CASE("safetensors: a JSON header nesting 10^6 deep is refused without recursion",
          "[hostile]") {
  // nlohmann::json parses recursively; a million nested arrays would overflow the stack.
  const std::string header = "{\"w\":" + std::string(1000000, '[') + std::string(1000000, ']') + "}";
  const std::string file = fmt::safetensors_raw(header, "");
  const std::string message = refusal([&] { instantid::parse_safetensors(span(file)); });
  CHECK_FALSE(message.empty());
  INFO(message);
}

TEST_CASE("safetensors: NaN and Inf weights are reported with the tensor's name", "[hostile]") {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    const std::string file = fmt::safetensors(
        {{"ok", "F32", {2}, fmt::float_bytes({1.0f, 2.0f})},
         {"ip_adapter.1.to_k_ip.weight", "F32", {3}, fmt::float_bytes({0.5f, bad, 0.25f})}});
    const auto tensors = instantid::parse_safetensors(span(file));
    REQUIRE(tensors.size() == 2);
    CHECK_NOTHROW(tensors[0].to_float());
    CHECK_THAT(refusal([&] { tensors[1].to_float(); }),
               Contains("ip_adapter.1.to_k_ip.weight"));
    // Asked for explicitly, the values come through unchanged.
    const auto raw = tensors[1].to_float(/*reject_non_finite=*/false);
    CHECK(std::isfinite(raw.values()[1]) == std::isfinite(bad));
  }
  SECTION("half precision: 0x7e00 is NaN, 0x7c00 is +Inf") {
    for (std::uint16_t bits : {std::uint16_t{0x7e00}, std::uint16_t{0x7c00}}) {
      std::string data;
      fmt::put_le(data, 0x3c00, 2);
      fmt::put_le(data, bits, 2);
      const std::string file = fmt::safetensors({{"h", "F16", {2}, data}});
      const auto tensors = instantid::parse_safetensors(span(file));
      CHECK_THAT(refusal([&] { tensors.at(0).to_float(); }), Contains("\"h\"") || Contains("h"));
    }
  }
}

TEST_CASE("torch zip: a pickle nesting 10^6 deep is refused without recursion", "[hostile]") {
  SECTION("a million MARKs") {
    const std::string pickle = "\x80\x02" + std::string(1000000, '(') + ".";
    const std::string message =
        refusal([&] { instantid::parse_torch_pickle(span(pickle)); });
    CHECK_THAT(message, Contains("limit") || Contains("max_pickle"));
  }
  SECTION("a million nested dicts") {
    std::string pickle = "\x80\x02";
    for (int i = 0; i < 1000000; ++i) pickle += std::string("}(X\x01\x00\x00\x00k", 8);
    pickle += "}";
    pickle += std::string(1000000, 'u');
    pickle += ".";
    const std::string message = refusal([&] { instantid::parse_torch_pickle(span(pickle)); });
    CHECK_THAT(message, Contains("limit") || Contains("max_pickle"));
  }
  SECTION("inside an archive") {
    const std::string pickle = "\x80\x02" + std::string(1000000, '(') + ".";
    const std::string zip = fmt::zip_stored({{"archive/data.pkl", pickle}});
    CHECK_FALSE(refusal([&] { instantid::read_torch_zip(span(zip)); }).empty());
  }
}

TEST_CASE("torch zip: a storage claiming 10^12 elements is refused before allocation",
          "[hostile]") {
  fmt::TorchTensor t("latents", "FloatStorage", {1000000, 1000000}, fmt::float_bytes({1.0f}));
  t.claimed_numel = 1000000000000;
  const std::string zip = fmt::torch_zip({{"image_proj", {t}}});
  AllocProbe probe;
  const std::string message = refusal([&] { instantid::read_torch_zip(span(zip)); });
  CHECK(probe.largest() < kSmallAllocation);
  CHECK_THAT(message, Contains("latents") || Contains("max_tensor_elements"));
}

TEST_CASE("torch zip: a tensor reaching past its storage is refused", "[hostile]") {
  SECTION("shape larger than the storage") {
    fmt::TorchTensor t("w", "FloatStorage", {4, 4}, fmt::float_bytes({1, 2, 3, 4}));
    t.claimed_numel = 4;
    const std::string zip = fmt::torch_zip({{"image_proj", {t}}});
    CHECK_THAT(refusal([&] { instantid::read_torch_zip(span(zip)); }), Contains("w"));
  }
  SECTION("storage offset past the end") {
    fmt::TorchTensor t("w", "FloatStorage", {2}, fmt::float_bytes({1, 2, 3, 4}));
    t.storage_offset = 1000000000;
    const std::string zip = fmt::torch_zip({{"image_proj", {t}}});
    CHECK_THAT(refusal([&] { instantid::read_torch_zip(span(zip)); }), Contains("w"));
  }
  SECTION("negative strides") {
    fmt::TorchTensor t("w", "FloatStorage", {2, 2}, fmt::float_bytes({1, 2, 3, 4}));
    t.stride = {-2, 1};
    const std::string zip = fmt::torch_zip({{"image_proj", {t}}});
    CHECK_THAT(refusal([&] { instantid::read_torch_zip(span(zip)); }), Contains("stride"));
  }
}

TEST_CASE("torch zip: an entry claiming more bytes than the archive holds is refused",
          "[hostile]") {
  const std::string zip = fmt::zip_stored({{"archive/data.pkl", "\x80\x02}.", 0x7fffffffu}});
  AllocProbe probe;
  const std::string message = refusal([&] { instantid::read_zip_directory(span(zip)); });
  CHECK(probe.largest() < kSmallAllocation);
  CHECK_THAT(message, Contains("archive/data.pkl"));
}

TEST_CASE("torch zip: globals outside the allowed set are refused, never executed", "[hostile]") {
  fmt::Pickle p;
  p.proto(2).global("os", "system").unicode("touch /tmp/instantid-pwned").tuple().reduce().stop();
  CHECK_THAT(refusal([&] { instantid::parse_torch_pickle(span(p.bytes())); }),
             Contains("os") && Contains("system"));
}

TEST_CASE("torch zip: NaN weights are reported with the tensor's name", "[hostile]") {
  fmt::TorchTensor t("latents", "FloatStorage", {3},
                     fmt::float_bytes({1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f}));
  const std::string zip = fmt::torch_zip({{"image_proj", {t}}});
  const auto tensors = instantid::read_torch_zip(span(zip));
  REQUIRE(tensors.size() == 1);
  CHECK_THAT(refusal([&] { tensors[0].to_float(); }), Contains("image_proj.latents"));
}

TEST_CASE("model: a NaN weight is refused with its name", "[hostile]") {
  const auto layout = instantid::ModelLayout::reduced(10, 8, 64, 1);
  auto tensors = instantid::InstantIDModel::synthetic_tensors(layout, 64, 1);
  REQUIRE_NOTHROW(instantid::InstantIDModel::from_tensors(tensors, layout));
  tensors.at("ip_adapter.3.to_v_ip.weight").values()[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(refusal([&] { instantid::InstantIDModel::from_tensors(tensors, layout); }),
             Contains("ip_adapter.3.to_v_ip.weight"));
}
