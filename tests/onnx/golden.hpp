#pragma once
// Goldens for the executor tests: a minimal safetensors (F32 only) reader and the deterministic
// astronaut input blob that tests/reference/make_onnx_goldens.py builds the same way.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <stb_image.h>

#include "instantid/error.hpp"
#include "instantid/tensor.hpp"
#include "support/test_data.hpp"

namespace instantid::test {

inline std::map<std::string, HostTensor> read_safetensors_f32(const std::string& path) {
  const std::string bytes = read_file(path);
  INSTANTID_CHECK(bytes.size() >= 8, path, ": missing or too short");
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  INSTANTID_CHECK(8 + header_len <= bytes.size(), path, ": bad header length");
  const auto header = nlohmann::json::parse(bytes.substr(8, header_len));
  std::map<std::string, HostTensor> out;
  const char* data = bytes.data() + 8 + header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    INSTANTID_CHECK(info.at("dtype") == "F32", path, ": ", name, " is not F32");
    std::vector<std::int64_t> shape = info.at("shape").get<std::vector<std::int64_t>>();
    const auto begin = info.at("data_offsets")[0].get<std::size_t>();
    const auto end = info.at("data_offsets")[1].get<std::size_t>();
    std::vector<float> values((end - begin) / 4);
    std::memcpy(values.data(), data + begin, end - begin);
    out.emplace(name, HostTensor(shape, std::move(values)));
  }
  return out;
}

// ../shared/faces/astronaut.png resampled to height x width by integer nearest
// (src = dst * size0 / size), blob (p - 127.5) * scale, NCHW RGB. Empty tensor if absent.
inline HostTensor astronaut_blob(std::int64_t height, std::int64_t width, float scale) {
  const std::string path = shared_path("faces/astronaut.png");
  if (path.empty()) return HostTensor();
  int w0 = 0, h0 = 0, channels = 0;
  unsigned char* pixels = stbi_load(path.c_str(), &w0, &h0, &channels, 3);
  INSTANTID_CHECK(pixels != nullptr, path, ": cannot decode");
  HostTensor blob({1, 3, height, width});
  for (std::int64_t y = 0; y < height; ++y) {
    const std::int64_t sy = y * h0 / height;
    for (std::int64_t x = 0; x < width; ++x) {
      const std::int64_t sx = x * w0 / width;
      for (std::int64_t c = 0; c < 3; ++c) {
        const float p = pixels[(sy * w0 + sx) * 3 + c];
        blob.data()[(c * height + y) * width + x] = (p - 127.5f) * scale;
      }
    }
  }
  stbi_image_free(pixels);
  return blob;
}

struct Diff {
  double max_abs = 0.0;
  double rel_l2 = 0.0;
};

inline Diff compare(const HostTensor& got, const HostTensor& want) {
  Diff d;
  double num = 0.0, den = 0.0;
  for (std::int64_t i = 0; i < want.numel(); ++i) {
    const double e = static_cast<double>(got.data()[i]) - want.data()[i];
    d.max_abs = std::max(d.max_abs, std::abs(e));
    num += e * e;
    den += static_cast<double>(want.data()[i]) * want.data()[i];
  }
  d.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

}  // namespace instantid::test
