// The stable-diffusion.cpp id_embeds writer: exact bytes of the header, the data, and the
// safetensors variant.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "commands/sdcpp_id_embeds.hpp"
#include "commands/tensor_io.hpp"
#include "instantid/error.hpp"

using instantid::HostTensor;

namespace {
std::int32_t int_at(const std::string& bytes, std::size_t offset) {
  std::int32_t value = 0;
  std::memcpy(&value, bytes.data() + offset, 4);
  return value;
}
}  // namespace

TEST_CASE("id_embeds.bin has stable-diffusion.cpp's header and row-major data", "[cli][sdcpp]") {
  HostTensor embeds({3, 512});
  for (std::int64_t i = 0; i < embeds.numel(); ++i) embeds.data()[i] = static_cast<float>(i) - 700.5f;
  const std::string bytes = instantid::cli::sdcpp_id_embeds_bytes(embeds);
  REQUIRE(bytes.size() == 7 * 4 + 9 + 3 * 512 * 4);
  CHECK(int_at(bytes, 0) == 4);    // n_dims as face_detect.py writes it
  CHECK(int_at(bytes, 4) == 9);    // strlen("id_embeds")
  CHECK(int_at(bytes, 8) == 0);    // GGML_TYPE_F32
  CHECK(int_at(bytes, 12) == 512); // ne[0]
  CHECK(int_at(bytes, 16) == 3);   // ne[1]
  CHECK(int_at(bytes, 20) == 1);
  CHECK(int_at(bytes, 24) == 1);
  CHECK(bytes.substr(28, 9) == "id_embeds");
  float first = 0, last = 0;
  std::memcpy(&first, bytes.data() + 37, 4);
  std::memcpy(&last, bytes.data() + bytes.size() - 4, 4);
  CHECK(first == -700.5f);
  CHECK(last == static_cast<float>(3 * 512 - 1) - 700.5f);

  const HostTensor back = instantid::cli::read_sdcpp_id_embeds_bytes(bytes, "memory");
  CHECK(back.shape() == embeds.shape());
  CHECK(back.values() == embeds.values());

  // [N, 1, E] is written as [N, E].
  const std::string from_3d = instantid::cli::sdcpp_id_embeds_bytes(embeds.reshaped({3, 1, 512}));
  CHECK(from_3d == bytes);
}

TEST_CASE("id_embeds writer refuses bad shapes and the reader bad files", "[cli][sdcpp]") {
  CHECK_THROWS_WITH(instantid::cli::sdcpp_id_embeds_bytes(HostTensor({2, 3, 4})),
                    Catch::Contains("got [2, 3, 4]"));
  std::string bytes = instantid::cli::sdcpp_id_embeds_bytes(HostTensor({1, 8}, 1.0f));
  CHECK_THROWS_WITH(instantid::cli::read_sdcpp_id_embeds_bytes(bytes.substr(0, bytes.size() - 1), "x"),
                    Catch::Contains("file size"));
  bytes[8] = 1;  // F16
  CHECK_THROWS_WITH(instantid::cli::read_sdcpp_id_embeds_bytes(bytes, "x"),
                    Catch::Contains("ggml type: got 1"));
}

TEST_CASE("id_embeds.safetensors holds one F32 tensor id_embeds [N, E]", "[cli][sdcpp]") {
  const std::string path = "test_cli_id_embeds.safetensors";
  HostTensor embeds({2, 1, 16});
  for (std::int64_t i = 0; i < embeds.numel(); ++i) embeds.data()[i] = 0.25f * static_cast<float>(i);
  instantid::cli::write_sdcpp_id_embeds(path, embeds);
  const instantid::cli::TensorMap tensors = instantid::cli::read_tensors(path);
  REQUIRE(tensors.size() == 1);
  const HostTensor& written = instantid::cli::require_tensor(tensors, "id_embeds", path);
  CHECK(written.shape() == std::vector<std::int64_t>{2, 16});
  CHECK(written.values() == embeds.values());
  std::remove(path.c_str());
}
