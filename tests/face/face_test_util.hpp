#pragma once
// Helpers shared by the face tests: the seeded synthetic images and the hash that
// tests/reference/make_face_goldens.py uses, and golden loading.

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instantid/face/image.hpp"
#include "support/test_data.hpp"

namespace instantid::face::test {

// 64-bit LCG, top byte per step (same as lcg_bytes in make_face_goldens.py).
inline Image synthetic_image(std::uint64_t seed, int width, int height) {
  Image image(width, height, 3);
  std::uint64_t x = seed;
  for (auto& b : image.pixels) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<std::uint8_t>(x >> 56);
  }
  return image;
}

// sum(b[i] * P^(i+1)) mod 2^64 with P = 0x100000001B3, printed as 16 hex digits.
inline std::string poly_hash(const void* data, std::size_t size) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t pw = 1;
  std::uint64_t h = 0;
  for (std::size_t i = 0; i < size; ++i) {
    pw *= 0x100000001B3ull;
    h += static_cast<std::uint64_t>(p[i]) * pw;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
inline std::string poly_hash(const Image& image) {
  return poly_hash(image.pixels.data(), image.pixels.size());
}

inline const nlohmann::json& goldens() {
  static const nlohmann::json g = nlohmann::json::parse(
      instantid::test::read_file(instantid::test::data_path("face/goldens.json")));
  return g;
}

inline std::string golden_path(const std::string& name) {
  return instantid::test::data_path("face/" + name);
}

}  // namespace instantid::face::test
