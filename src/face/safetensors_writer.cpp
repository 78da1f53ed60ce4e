#include "instantid/face/safetensors_writer.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "instantid/error.hpp"
#include "instantid/tensor.hpp"

namespace instantid::face {

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    std::int64_t numel = 1;
    for (std::int64_t d : t.shape) {
      INSTANTID_CHECK(d >= 0, "write_safetensors: tensor '", t.name, "' shape: got ",
                      shape_string(t.shape), ", expected non-negative dims");
      numel *= d;
    }
    INSTANTID_CHECK(static_cast<std::size_t>(numel) == t.values.size(), "write_safetensors: tensor '",
                    t.name, "': got ", t.values.size(), " values, expected ", numel, " for shape ",
                    shape_string(t.shape));
    INSTANTID_CHECK(!header.contains(t.name), "write_safetensors: tensor name '", t.name,
                    "' appears twice, expected unique names");
    const std::uint64_t bytes = static_cast<std::uint64_t>(numel) * 4;
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    INSTANTID_CHECK(out.good(), "write_safetensors: cannot create '", tmp, "'");
    const std::uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const NamedTensor& t : tensors) {
      // Little-endian float32, the host order on every platform we build for.
      out.write(reinterpret_cast<const char*>(t.values.data()),
                static_cast<std::streamsize>(t.values.size() * sizeof(float)));
    }
    out.flush();
    INSTANTID_CHECK(out.good(), "write_safetensors: write to '", tmp, "' failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(make_message("write_safetensors: cannot rename '", tmp, "' to '", path, "': ",
                             std::strerror(errno)));
  }
}

}  // namespace instantid::face
