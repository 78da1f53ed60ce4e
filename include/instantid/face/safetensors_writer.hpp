#pragma once
// A minimal safetensors writer for what `instantid embed --out` produces (float32 tensors).

#include <cstdint>
#include <string>
#include <vector>

namespace instantid::face {

struct NamedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;  // row-major, numel(shape) values
};

// Writes the tensors (dtype F32) to path + ".tmp" and renames it onto path, so readers never see a
// partial file. Throws instantid::Error on I/O failure or a shape/value count mismatch.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors);

}  // namespace instantid::face
