#include "commands/sdcpp_id_embeds.hpp"

#include <cstring>
#include <vector>

#include "commands/tensor_io.hpp"
#include "instantid/error.hpp"

namespace instantid::cli {

namespace {

constexpr const char* kTensorName = "id_embeds";
constexpr std::int32_t kGgmlTypeF32 = 0;
constexpr std::int32_t kDims = 4;

void put_int32(std::string& out, std::int32_t value) {
  const auto bits = static_cast<std::uint32_t>(value);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

std::int32_t get_int32(const std::string& bytes, std::size_t offset) {
  std::uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) {
    bits |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  }
  return static_cast<std::int32_t>(bits);
}

// [N, E] view of [N, E] or [N, 1, E].
HostTensor as_rows(const HostTensor& embeds) {
  if (embeds.ndim() == 2) return embeds;
  if (embeds.ndim() == 3 && embeds.size(1) == 1) {
    return embeds.reshaped({embeds.size(0), embeds.size(2)});
  }
  throw_mismatch("id_embeds: embeddings shape", embeds.shape_str(), "[N, E] or [N, 1, E]");
}

}  // namespace

std::string sdcpp_id_embeds_bytes(const HostTensor& embeds) {
  const HostTensor rows = as_rows(embeds);
  INSTANTID_CHECK(rows.size(0) >= 1 && rows.size(1) >= 1,
                  "id_embeds: embeddings shape: got ", rows.shape_str(), ", expected N >= 1, E >= 1");
  INSTANTID_CHECK(rows.size(0) <= 0x7fffffff && rows.size(1) <= 0x7fffffff,
                  "id_embeds: embeddings shape: got ", rows.shape_str(),
                  ", expected dimensions that fit int32");
  const std::string name = kTensorName;
  std::string out;
  put_int32(out, kDims);
  put_int32(out, static_cast<std::int32_t>(name.size()));
  put_int32(out, kGgmlTypeF32);
  put_int32(out, static_cast<std::int32_t>(rows.size(1)));  // ne[0]: the embedding, innermost
  put_int32(out, static_cast<std::int32_t>(rows.size(0)));  // ne[1]: one row per image
  put_int32(out, 1);
  put_int32(out, 1);
  out += name;
  out.append(reinterpret_cast<const char*>(rows.data()),
             static_cast<std::size_t>(rows.numel()) * sizeof(float));
  return out;
}

void write_sdcpp_id_embeds(const std::string& path, const HostTensor& embeds) {
  const std::string suffix = ".safetensors";
  if (path.size() >= suffix.size() &&
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    const HostTensor rows = as_rows(embeds);
    write_safetensors(path, {{kTensorName, &rows}});
    return;
  }
  write_file_atomic(path, sdcpp_id_embeds_bytes(embeds));
}

HostTensor read_sdcpp_id_embeds_bytes(const std::string& bytes, const std::string& source) {
  INSTANTID_CHECK(bytes.size() >= 12, source, ": id_embeds.bin header: got ", bytes.size(),
                  " bytes, expected at least 12");
  const std::int32_t n_dims = get_int32(bytes, 0);
  const std::int32_t name_length = get_int32(bytes, 4);
  const std::int32_t type = get_int32(bytes, 8);
  INSTANTID_CHECK(n_dims >= 1 && n_dims <= 4, source, ": n_dims: got ", n_dims,
                  ", expected 1..4");
  INSTANTID_CHECK(name_length >= 0 && name_length <= 4096, source, ": name length: got ",
                  name_length, ", expected 0..4096");
  INSTANTID_CHECK(type == kGgmlTypeF32, source, ": ggml type: got ", type, ", expected 0 (F32)");
  std::size_t offset = 12;
  INSTANTID_CHECK(bytes.size() >= offset + 4 * static_cast<std::size_t>(n_dims), source,
                  ": dimensions: got a truncated file, expected ", n_dims, " int32 values");
  std::int64_t ne[4] = {1, 1, 1, 1};
  for (int i = 0; i < n_dims; ++i) {
    ne[i] = get_int32(bytes, offset);
    offset += 4;
    INSTANTID_CHECK(ne[i] >= 1 && ne[i] <= (1 << 24), source, ": ne[", i, "]: got ", ne[i],
                    ", expected 1..16777216");
  }
  INSTANTID_CHECK(ne[2] == 1 && ne[3] == 1, source, ": ne[2], ne[3]: got ", ne[2], ", ", ne[3],
                  ", expected 1, 1 (a matrix of embeddings)");
  // Multiplied only now: four dims of 2^24 would overflow int64 (fuzz_cli_inputs found it).
  const std::int64_t count = ne[0] * ne[1];
  offset += static_cast<std::size_t>(name_length);
  const std::size_t expected = offset + static_cast<std::size_t>(count) * sizeof(float);
  INSTANTID_CHECK(bytes.size() == expected, source, ": file size: got ", bytes.size(),
                  " bytes, expected ", expected);
  HostTensor rows({ne[1], ne[0]});
  std::memcpy(rows.data(), bytes.data() + offset, static_cast<std::size_t>(count) * sizeof(float));
  return rows;
}

}  // namespace instantid::cli
