// libFuzzer target: torch.save checkpoints — the zip directory, the restricted pickle interpreter
// and storage resolution (read_torch_zip), then the float32 conversion of every tensor. Inputs that
// are not a zip archive are also fed to the pickle interpreter alone, so the corpus can hold bare
// pickles. Only instantid::Error may escape.

#include <cstddef>
#include <cstdint>

#include "fuzz_limits.hpp"
#include "instantid/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  instantid::ReaderLimits limits;
  limits.max_tensor_elements = instantid::fuzz::kMaxElements;
  const instantid::ByteSpan bytes{data, size};
  const bool is_zip = size >= 2 && data[0] == 'P' && data[1] == 'K';
  try {
    if (!is_zip) (void)instantid::parse_torch_pickle(bytes, limits);
  } catch (const instantid::Error&) {
  }
  try {
    const auto tensors = instantid::read_torch_zip(bytes, limits);
    for (const auto& t : tensors) (void)t.to_float(/*reject_non_finite=*/true);
  } catch (const instantid::Error&) {
  }
  return 0;
}
