#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

#include "bytes.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid {

using namespace checkpoint_detail;

namespace {

constexpr int kMaxJsonDepth = 64;

// nlohmann's parser is iterative but a hostile header could still nest deeply; refuse that
// before parsing (the format needs depth 3).
void check_json_depth(const std::uint8_t* p, std::size_t n) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t c = p[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        throw Error(make_message("safetensors header: JSON nesting deeper than ", kMaxJsonDepth,
                                 " at header byte ", i,
                                 ", expected {name: {dtype, shape, "
                                 "data_offsets}}"));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

std::uint64_t json_uint(const nlohmann::json& v, const std::string& name, const char* field) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0)) {
    throw Error(make_message("safetensors tensor \"", name, "\": ", field, ": got ", v.dump(),
                             ", expected a non-negative integer"));
  }
  return v.get<std::uint64_t>();
}

DType parse_dtype(const nlohmann::json& v, const std::string& name) {
  if (!v.is_string()) {
    throw Error(make_message("safetensors tensor \"", name, "\": dtype: got ", v.dump(),
                             ", expected a string (F32, F16 or BF16)"));
  }
  const std::string s = v.get<std::string>();
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  throw Error(make_message("safetensors tensor \"", name, "\": dtype \"", s,
                           "\" is not supported, expected F32, F16 or BF16"));
}

struct Entry {
  CheckpointTensor tensor;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

}  // namespace

std::vector<CheckpointTensor> parse_safetensors(ByteSpan bytes, const ReaderLimits& limits) {
  if (bytes.size < 8) {
    throw Error(make_message("safetensors: file too short: got ", bytes.size,
                             " bytes, expected at least 8 (the header length)"));
  }
  const std::uint64_t header_len = read_u64(bytes.data);
  if (header_len > limits.max_header_bytes) {
    throw Error(make_message("safetensors: header length ", header_len,
                             " exceeds the limit max_header_bytes = ", limits.max_header_bytes));
  }
  if (header_len > bytes.size - 8) {
    throw Error(make_message("safetensors: header length ", header_len,
                             " runs past the end of the file: got ", bytes.size - 8,
                             " bytes after the length field"));
  }
  const std::uint8_t* header = bytes.data + 8;
  check_json_depth(header, header_len);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(header, header + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw Error(make_message("safetensors header: invalid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    throw Error(make_message("safetensors header: got a JSON ", root.type_name(),
                             ", expected an object {name: {dtype, shape, data_offsets}}"));
  }
  if (root.size() > limits.max_tensors + 1) {
    throw Error(make_message("safetensors header: ", root.size(),
                             " entries exceed the limit max_tensors = ", limits.max_tensors));
  }
  const std::uint8_t* data = header + header_len;
  const std::uint64_t data_size = bytes.size - 8 - header_len;

  std::vector<Entry> entries;
  entries.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        throw Error(make_message("safetensors __metadata__: got a JSON ", v.type_name(),
                                 ", expected an object of strings"));
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          throw Error(make_message("safetensors __metadata__ \"", m.key(), "\": got ",
                                   m.value().dump(), ", expected a string"));
        }
      }
      continue;
    }
    if (name.size() > limits.max_string_bytes) {
      throw Error(
          make_message("safetensors: tensor name of ", name.size(),
                       " bytes exceeds the limit max_string_bytes = ", limits.max_string_bytes));
    }
    if (!v.is_object()) {
      throw Error(make_message("safetensors tensor \"", name, "\": got a JSON ", v.type_name(),
                               ", expected an object {dtype, shape, data_offsets}"));
    }
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(field)) {
        throw Error(make_message("safetensors tensor \"", name, "\": field \"", field,
                                 "\" is missing, expected dtype, shape and data_offsets"));
      }
    }
    Entry e;
    e.tensor.name = name;
    e.tensor.dtype = parse_dtype(v["dtype"], name);
    const nlohmann::json& shape = v["shape"];
    if (!shape.is_array()) {
      throw Error(make_message("safetensors tensor \"", name, "\": shape: got ", shape.dump(),
                               ", expected an array of non-negative integers"));
    }
    if (shape.size() > static_cast<std::size_t>(limits.max_ndim)) {
      throw Error(make_message("safetensors tensor \"", name, "\": ", shape.size(),
                               " dimensions exceed the limit max_ndim = ", limits.max_ndim));
    }
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const nlohmann::json& d : shape) {
      const std::uint64_t size = json_uint(d, name, "shape");
      overflow = overflow || !checked_mul(numel, size, &numel);
      e.tensor.shape.push_back(static_cast<std::int64_t>(size));
    }
    if (overflow || numel > static_cast<std::uint64_t>(limits.max_tensor_elements)) {
      throw Error(make_message(
          "safetensors tensor \"", name, "\": shape ", shape.dump(),
          " has more elements than the limit max_tensor_elements = ", limits.max_tensor_elements));
    }
    // Row-major strides.
    e.tensor.strides.assign(e.tensor.shape.size(), 1);
    for (std::size_t i = e.tensor.shape.size(); i-- > 1;) {
      e.tensor.strides[i - 1] = e.tensor.strides[i] * e.tensor.shape[i];
    }
    const nlohmann::json& offsets = v["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      throw Error(make_message("safetensors tensor \"", name, "\": data_offsets: got ",
                               offsets.dump(), ", expected [begin, end]"));
    }
    e.begin = json_uint(offsets[0], name, "data_offsets");
    e.end = json_uint(offsets[1], name, "data_offsets");
    if (e.begin > e.end || e.end > data_size) {
      throw Error(make_message("safetensors tensor \"", name, "\": data_offsets [", e.begin, ", ",
                               e.end, "] out of range: expected begin <= end <= ", data_size,
                               " (the data section)"));
    }
    const std::uint64_t nbytes = numel * dtype_size(e.tensor.dtype);
    if (e.end - e.begin != nbytes) {
      throw Error(make_message("safetensors tensor \"", name, "\": data_offsets [", e.begin, ", ",
                               e.end, "] hold ", e.end - e.begin, " bytes, expected ", nbytes, " (",
                               dtype_name(e.tensor.dtype), " × ", shape_string(e.tensor.shape),
                               ")"));
    }
    e.tensor.data = data + e.begin;
    entries.push_back(std::move(e));
  }

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The data section must be covered exactly: no overlaps (aliasing) and no holes (polyglots).
  std::uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < cursor) {
      throw Error(make_message("safetensors tensors \"", *previous, "\" and \"", e.tensor.name,
                               "\" overlap: \"", e.tensor.name, "\" begins at ", e.begin,
                               ", expected >= ", cursor));
    }
    if (e.begin > cursor) {
      throw Error(
          make_message("safetensors: data bytes [", cursor, ", ", e.begin,
                       ") belong to no tensor, expected tensors to cover the data section"));
    }
    cursor = e.end;
    previous = &e.tensor.name;
  }
  if (cursor != data_size) {
    throw Error(make_message("safetensors: data section has ", data_size, " bytes, expected ",
                             cursor, " (the end of the last tensor)"));
  }
  std::vector<CheckpointTensor> tensors;
  tensors.reserve(entries.size());
  for (Entry& e : entries) tensors.push_back(std::move(e.tensor));
  return tensors;
}

}  // namespace instantid
