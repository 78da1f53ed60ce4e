// Catch2 main shared by every test executable. GPU test executables (kGpuTest) exit 77
// — CTest's SKIP_RETURN_CODE — when no CUDA device is visible, so CPU-only machines report them as
// skipped rather than passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>

#include "support/test_data.hpp"

namespace instantid::test {
extern const bool kGpuTest;  // defined per executable by instantid_add_test
}

int main(int argc, char* argv[]) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::strncmp(argv[i], "--list", 6) == 0;
  if (instantid::test::kGpuTest && !listing && !instantid::test::gpu_available()) {
    std::printf("no CUDA device visible: skipping GPU tests\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
