// libFuzzer target: the safetensors reader (parse_safetensors) and the float32 conversion of every
// tensor it describes. Only instantid::Error may escape the library; anything else (a crash, a
// sanitizer report, another exception, an allocation over -malloc_limit_mb) is a finding.

#include <cstddef>
#include <cstdint>

#include "fuzz_limits.hpp"
#include "instantid/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  instantid::ReaderLimits limits;
  limits.max_tensor_elements = instantid::fuzz::kMaxElements;
  try {
    const auto tensors = instantid::parse_safetensors({data, size}, limits);
    for (const auto& t : tensors) {
      // The reader promises every element lies inside the buffer: to_float reads them all.
      (void)t.to_float(/*reject_non_finite=*/true);
    }
  } catch (const instantid::Error&) {
  }
  return 0;
}
