#include "commands/tensor_io.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid::cli {

TensorMap read_tensors(const std::string& path) {
  const CheckpointFile file = CheckpointFile::open(path);
  TensorMap result;
  for (const CheckpointTensor& tensor : file.tensors()) {
    try {
      result.emplace(tensor.name, tensor.to_float(/*reject_non_finite=*/true));
    } catch (const Error& e) {  // a NaN/Inf value: say which file holds it
      throw Error(make_message(path, ": ", e.what()));
    }
  }
  return result;
}

const HostTensor& require_tensor(const TensorMap& tensors, const std::string& name,
                                 const std::string& path) {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::string present;
  for (const auto& entry : tensors) present += (present.empty() ? "" : ", ") + entry.first;
  throw Error(make_message(path, ": tensor '", name, "': got no such tensor, expected one (has: ",
                           present.empty() ? "none" : present, ")"));
}

std::string safetensors_bytes(const std::vector<std::pair<std::string, const HostTensor*>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::size_t bytes = static_cast<std::size_t>(tensor->numel()) * sizeof(float);
    header[name] = {{"dtype", "F32"},
                    {"shape", tensor->shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  // Pad the header with spaces so the data section starts 8-byte aligned (as safetensors does).
  while ((8 + json.size()) % 8 != 0) json.push_back(' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  const std::uint64_t length = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  out += json;
  for (const auto& entry : tensors) {
    const HostTensor& tensor = *entry.second;
    // Little-endian float32 on the hosts we support (x86-64, aarch64).
    out.append(reinterpret_cast<const char*>(tensor.data()),
               static_cast<std::size_t>(tensor.numel()) * sizeof(float));
  }
  return out;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  if (file == nullptr) {
    throw Error(make_message(path, ": cannot create ", temporary, ": ", std::strerror(errno)));
  }
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  const int saved_errno = errno;
  const bool flushed = std::fflush(file) == 0 && ::fsync(::fileno(file)) == 0;
  const bool closed = std::fclose(file) == 0;
  if (!written || !flushed || !closed) {
    std::remove(temporary.c_str());
    throw Error(make_message(path, ": writing ", bytes.size(), " bytes failed: ",
                             std::strerror(written ? errno : saved_errno)));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    std::remove(temporary.c_str());
    throw Error(make_message(path, ": cannot rename ", temporary, " into place: ",
                             std::strerror(rename_errno)));
  }
}

}  // namespace instantid::cli
