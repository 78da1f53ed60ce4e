#pragma once
// Shared helpers of the checkpoint tests: fixture bytes, layouts, checksums.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "instantid/layout.hpp"
#include "instantid/tensor.hpp"
#include "support/test_data.hpp"

namespace instantid::test {

inline std::vector<std::uint8_t> fixture_bytes(const std::string& name) {
  const std::string text = read_file(data_path("checkpoint/" + name));
  return std::vector<std::uint8_t>(text.begin(), text.end());
}

// The layout of the reduced fixtures: ModelLayout::reduced(10, 64, 64, 1) (D_out 32 in files).
inline ModelLayout reduced_layout() { return ModelLayout::reduced(10, 64, 64, 1); }

// The mini fixtures: the reduced layout with depth 1 and only layers 0, 1, 4, 69.
inline ModelLayout mini_layout() {
  ModelLayout full = reduced_layout();
  ModelLayout mini = full;
  mini.depth = 1;
  mini.layers = {full.layers[0], full.layers[1], full.layers[4], full.layers[69]};
  return mini;
}

// sum_i bits(x_i) * (2 i + 1) mod 2^64, as make_checkpoint_fixtures.py computes it.
inline std::uint64_t checksum(const HostTensor& t) {
  std::uint64_t sum = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, t.data() + i, 4);
    sum += static_cast<std::uint64_t>(bits) * (2 * static_cast<std::uint64_t>(i) + 1);
  }
  return sum;
}

}  // namespace instantid::test
