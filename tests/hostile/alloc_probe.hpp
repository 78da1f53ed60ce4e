#pragma once
// Proof that a hostile size is refused before memory is allocated for it: this test executable
// replaces the global operator new (alloc_probe.cpp) and records the largest single request made
// while an AllocProbe is alive. Allocations through malloc by C libraries (stb_image, protobuf's
// arenas) are not seen; tests that need them say so.

#include <cstddef>

namespace instantid::test {

class AllocProbe {
 public:
  AllocProbe();
  ~AllocProbe();
  AllocProbe(const AllocProbe&) = delete;
  AllocProbe& operator=(const AllocProbe&) = delete;
  // Largest single operator new request since construction, in bytes.
  std::size_t largest() const;
};

}  // namespace instantid::test
