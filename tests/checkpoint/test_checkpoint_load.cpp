// Loading real torch.save and hand-written safetensors fixtures (tests/reference/
// make_checkpoint_fixtures.py): every tensor bit-exact against torch's float32 values.

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "checkpoint_test_util.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/model.hpp"

using namespace instantid;
using namespace instantid::test;

namespace {

const nlohmann::json& checksums() {
  static const nlohmann::json j =
      nlohmann::json::parse(read_file(data_path("checkpoint/checksums.json")));
  return j;
}

// Every tensor of the model matches the fixture's shapes and checksums, and nothing else is there.
void require_matches_checksums(const InstantIDModel& model, const std::string& fixture) {
  const nlohmann::json& expected = checksums().at(fixture);
  REQUIRE(model.tensors().size() == expected.size());
  for (const auto& [name, tensor] : model.tensors()) {
    INFO(fixture << ": " << name);
    REQUIRE(expected.contains(name));
    CHECK(tensor.shape() == expected[name]["shape"].get<std::vector<std::int64_t>>());
    CHECK(std::to_string(checksum(tensor)) == expected[name]["checksum"].get<std::string>());
  }
}

}  // namespace

TEST_CASE("Format is detected by content", "[checkpoint]") {
  CHECK(CheckpointFile::open(data_path("checkpoint/mini_f32.bin")).format() ==
        CheckpointFormat::kTorchZip);
  CHECK(CheckpointFile::open(data_path("checkpoint/mini_f32.safetensors")).format() ==
        CheckpointFormat::kSafetensors);
}

TEST_CASE("Reduced fp16 torch.save checkpoint loads bit-exact", "[checkpoint]") {
  const std::string path = data_path("checkpoint/reduced_f16.bin");
  const InstantIDModel model = InstantIDModel::load(path, reduced_layout());
  CHECK(model.output_dim() == 32);
  CHECK(model.storage_dtype() == DType::kF16);
  CHECK(model.source() == path);
  require_matches_checksums(model, "reduced_f16.bin");
  CHECK(model.to_k_ip(0).shape() == std::vector<std::int64_t>{64, 32});
  CHECK(model.to_v_ip(69).shape() == std::vector<std::int64_t>{128, 32});
  CHECK(&model.to_k_ip(69) == &model.tensor("ip_adapter.139.to_k_ip.weight"));
  CHECK(model.image_proj("latents").shape() == std::vector<std::int64_t>{1, 16, 64});
  REQUIRE_THROWS_WITH(model.to_k_ip(70), Catch::Contains("layer index: got 70, expected 0..69"));
  REQUIRE_THROWS_WITH(model.tensor("image_proj.nope"), Catch::Contains("\"image_proj.nope\""));
}

TEST_CASE("Mini fixtures: .bin and .safetensors give identical values in every dtype",
          "[checkpoint]") {
  for (const char* tag : {"f32", "f16", "bf16"}) {
    const std::string bin = std::string("mini_") + tag + ".bin";
    const std::string st = std::string("mini_") + tag + ".safetensors";
    INFO(tag);
    const InstantIDModel from_bin =
        InstantIDModel::load(data_path("checkpoint/" + bin), mini_layout());
    const InstantIDModel from_st =
        InstantIDModel::load(data_path("checkpoint/" + st), mini_layout());
    require_matches_checksums(from_bin, bin);
    require_matches_checksums(from_st, st);
    const DType dtype = std::string(tag) == "f32"   ? DType::kF32
                        : std::string(tag) == "f16" ? DType::kF16
                                                    : DType::kBF16;
    CHECK(from_bin.storage_dtype() == dtype);
    CHECK(from_st.storage_dtype() == dtype);
    CHECK(from_bin.output_dim() == 32);
    for (const auto& [name, tensor] : from_bin.tensors()) {
      INFO(name);
      CHECK(tensor.values() == from_st.tensor(name).values());
    }
  }
}

TEST_CASE("Torch storages: shared storage with offset, and a transposed view", "[checkpoint]") {
  const CheckpointFile file = CheckpointFile::open(data_path("checkpoint/mini_f32.bin"));
  const CheckpointTensor* k3 = file.find("ip_adapter.3.to_k_ip.weight");
  const CheckpointTensor* v3 = file.find("ip_adapter.3.to_v_ip.weight");
  const CheckpointTensor* k9 = file.find("ip_adapter.9.to_k_ip.weight");
  REQUIRE(k3 != nullptr);
  REQUIRE(v3 != nullptr);
  REQUIRE(k9 != nullptr);
  CHECK(v3->data == k3->data + 64 * 32 * 4);  // same storage, offset 64·32 elements
  CHECK(k9->shape == std::vector<std::int64_t>{128, 32});
  CHECK(k9->strides == std::vector<std::int64_t>{1, 128});
  CHECK_FALSE(k9->is_contiguous());
  const HostTensor dense = k9->to_float();
  // Element (r, c) of the transposed view is element c·128 + r of its storage.
  float raw = 0.0f;
  std::memcpy(&raw, k9->data + (5 * 128 + 7) * 4, 4);
  CHECK(dense.data()[7 * 32 + 5] == raw);
}

TEST_CASE("Special fp16/bf16 values convert exactly", "[checkpoint]") {
  // proj_in.bias[0..12] holds 0, -0, fp16 subnormals, ±65504, ... (see the generator).
  const InstantIDModel f16 =
      InstantIDModel::load(data_path("checkpoint/mini_f16.bin"), mini_layout());
  const float* b = f16.image_proj("proj_in.bias").data();
  CHECK(b[0] == 0.0f);
  CHECK(std::signbit(b[1]));
  CHECK(b[2] == std::ldexp(1.0f, -24));
  CHECK(b[3] == -std::ldexp(1.0f, -24));
  CHECK(b[4] == std::ldexp(0.75f, -14));
  CHECK(b[5] == 65504.0f);
  CHECK(b[6] == -65504.0f);
  CHECK(b[8] == 3.140625f);
  CHECK(b[11] == 1024.0f);
  const InstantIDModel bf16 =
      InstantIDModel::load(data_path("checkpoint/mini_bf16.safetensors"), mini_layout());
  const float* c = bf16.image_proj("proj_in.bias").data();
  CHECK(c[8] == 3.140625f);
  CHECK(c[10] == std::ldexp(1.0f, -133));
  CHECK(c[9] == -2.5f);
}

TEST_CASE("expected_shapes: SDXL has 70 k/v pairs and the spec's Resampler shapes",
          "[checkpoint]") {
  const auto shapes = InstantIDModel::expected_shapes(ModelLayout::sdxl(), 2048);
  using S = std::vector<std::int64_t>;
  // Resampler: latents, proj_in ×2, proj_out ×2, norm_out ×2 + 4 layers × 11.
  CHECK(shapes.size() == 70 * 2 + 7 + 4 * 11);
  CHECK(shapes.at("image_proj.latents") == S{1, 16, 1280});
  CHECK(shapes.at("image_proj.proj_in.weight") == S{1280, 512});
  CHECK(shapes.at("image_proj.proj_in.bias") == S{1280});
  CHECK(shapes.at("image_proj.proj_out.weight") == S{2048, 1280});
  CHECK(shapes.at("image_proj.proj_out.bias") == S{2048});
  CHECK(shapes.at("image_proj.norm_out.weight") == S{2048});
  CHECK(shapes.at("image_proj.norm_out.bias") == S{2048});
  for (int i = 0; i < 4; ++i) {
    const std::string l = "image_proj.layers." + std::to_string(i) + ".";
    CHECK(shapes.at(l + "0.norm1.weight") == S{1280});
    CHECK(shapes.at(l + "0.norm2.bias") == S{1280});
    CHECK(shapes.at(l + "0.to_q.weight") == S{1280, 1280});
    CHECK(shapes.at(l + "0.to_kv.weight") == S{2560, 1280});
    CHECK(shapes.at(l + "0.to_out.weight") == S{1280, 1280});
    CHECK(shapes.at(l + "1.0.weight") == S{1280});
    CHECK(shapes.at(l + "1.0.bias") == S{1280});
    CHECK(shapes.at(l + "1.1.weight") == S{5120, 1280});
    CHECK(shapes.at(l + "1.3.weight") == S{1280, 5120});
  }
  const ModelLayout sdxl = ModelLayout::sdxl();
  std::int64_t params = 0;
  for (int n = 0; n < 70; ++n) {
    const std::string key = std::to_string(2 * n + 1);
    const S expected{sdxl.layers[n].width, 2048};
    CHECK(shapes.at("ip_adapter." + key + ".to_k_ip.weight") == expected);
    CHECK(shapes.at("ip_adapter." + key + ".to_v_ip.weight") == expected);
  }
  for (const auto& [name, shape] : shapes) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    params += n;
  }
  // 1.7 GB in fp32: the size of the published ip-adapter.bin.
  CHECK(params * 4 > 1'650'000'000);
  CHECK(params * 4 < 1'750'000'000);
  CHECK(shapes.count("ip_adapter.0.to_k_ip.weight") == 0);
  CHECK(shapes.count("ip_adapter.141.to_k_ip.weight") == 0);
}

TEST_CASE("from_tensors validates like load", "[checkpoint]") {
  const InstantIDModel loaded =
      InstantIDModel::load(data_path("checkpoint/mini_f32.safetensors"), mini_layout());
  InstantIDModel copy = InstantIDModel::from_tensors(loaded.tensors(), mini_layout(), "copy");
  CHECK(copy.source() == "copy");
  CHECK(copy.output_dim() == 32);
  CHECK(copy.tensor("image_proj.latents").values() == loaded.tensor("image_proj.latents").values());
}

TEST_CASE("Real state_dict()s: _metadata BUILD, Parameters, 0-d and empty tensors",
          "[checkpoint]") {
  const CheckpointFile file = CheckpointFile::open(data_path("checkpoint/state_dicts.bin"));
  const nlohmann::json& expected = checksums().at("state_dicts.bin");
  REQUIRE(file.tensors().size() == expected.size());
  for (const CheckpointTensor& t : file.tensors()) {
    INFO(t.name);
    REQUIRE(expected.contains(t.name));
    CHECK(t.shape == expected[t.name]["shape"].get<std::vector<std::int64_t>>());
    const HostTensor f = t.to_float();
    CHECK(std::to_string(checksum(f)) == expected[t.name]["checksum"].get<std::string>());
  }
  REQUIRE(file.find("image_proj.0.weight") != nullptr);
  CHECK(file.find("image_proj.1.bias") != nullptr);
  CHECK(file.find("extra.param")->to_float().values() == std::vector<float>{0, 1, 2, 3});
  CHECK(file.find("extra.inner.scalar")->shape.empty());
  CHECK(file.find("extra.inner.scalar")->to_float().values() == std::vector<float>{2.5f});
  CHECK(file.find("extra.inner.empty")->numel() == 0);
}

TEST_CASE("A real 191-tensor torch.save pickle fits well inside the default limits",
          "[checkpoint]") {
  ReaderLimits tight;
  tight.max_pickle_objects = 10000;
  tight.max_pickle_memo = 2000;
  tight.max_pickle_stack = 2100;  // torch batches SETITEMS by 1000 pairs
  tight.max_pickle_depth = 4;
  const CheckpointFile file = CheckpointFile::open(data_path("checkpoint/reduced_f16.bin"), tight);
  CHECK(file.tensors().size() == 191);
}
