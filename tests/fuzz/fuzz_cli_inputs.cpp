// libFuzzer target: the command line's input readers (tools/commands): read_tensors() — every
// tensor file the CLI takes (--embeds, --tokens, --inputs, --mask) goes through it: a mapped
// safetensors or torch zip file, converted to float32 with NaN/Inf refused — and
// read_sdcpp_id_embeds_bytes() (`instantid inspect` of stable-diffusion.cpp's id_embeds.bin).
// Only instantid::Error may escape.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "commands/sdcpp_id_embeds.hpp"
#include "commands/tensor_io.hpp"
#include "instantid/error.hpp"

namespace {

// read_tensors() takes a path (it maps the file), so each input is written to one scratch file.
const std::string& scratch_path() {
  static const std::string path = "/tmp/instantid-fuzz-cli-" + std::to_string(::getpid());
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)instantid::cli::read_sdcpp_id_embeds_bytes(bytes, "id_embeds.bin");
  } catch (const instantid::Error&) {
  }
  std::FILE* file = std::fopen(scratch_path().c_str(), "wb");
  if (file == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, file) == size;
  std::fclose(file);
  if (!written) return 0;
  try {
    (void)instantid::cli::read_tensors(scratch_path());
  } catch (const instantid::Error&) {
  }
  return 0;
}
