#pragma once
// Tensor files of the command line: every input is read through the checkpoint readers
// (safetensors or torch zip, by content) and converted to float32; every output is a float32
// safetensors file written to a temporary file beside the target and renamed over it, so a reader
// never sees a half-written file and a failed command leaves nothing behind.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "instantid/tensor.hpp"

namespace instantid::cli {

using TensorMap = std::map<std::string, HostTensor>;

// All tensors of a safetensors / torch zip file as float32. Errors name the path.
TensorMap read_tensors(const std::string& path);

// The tensor `name` of `tensors` (read from `path`); throws Error naming the file, the tensor
// and the names present when absent.
const HostTensor& require_tensor(const TensorMap& tensors, const std::string& name,
                                 const std::string& path);

// Serialises tensors (float32, in the given order) as safetensors bytes with optional
// "__metadata__" string pairs.
std::string safetensors_bytes(const std::vector<std::pair<std::string, const HostTensor*>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` atomically: <path>.tmp-<pid> in the same folder, flushed, then renamed.
// On any failure the temporary file is removed and Error names the path.
void write_file_atomic(const std::string& path, const std::string& bytes);

inline void write_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const HostTensor*>>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  write_file_atomic(path, safetensors_bytes(tensors, metadata));
}

}  // namespace instantid::cli
