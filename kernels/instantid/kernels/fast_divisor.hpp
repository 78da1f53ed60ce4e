#pragma once
// Division of non-negative 32-bit integers by a divisor fixed at launch: the host computes a
// multiplier and a shift once, the kernel divides with a multiply-high, an add and a shift instead
// of the ~20-instruction sequence of a runtime integer division (Granlund & Montgomery, "Division
// by invariant integers using multiplication", 1994: the round-up variant).

#include <cstdint>

#if defined(__CUDACC__)
#define INSTANTID_HOST_DEVICE __host__ __device__
#else
#define INSTANTID_HOST_DEVICE
#endif

namespace instantid::kernels {

struct FastDivisor {
  int divisor = 1;
  std::uint32_t multiplier = 1;
  int shift = 0;

  FastDivisor() = default;
  // divisor >= 1.
  explicit FastDivisor(int d) : divisor(d) {
    while ((std::uint64_t{1} << shift) < static_cast<std::uint64_t>(d)) ++shift;  // ceil(log2 d)
    multiplier = static_cast<std::uint32_t>(
        ((std::uint64_t{1} << 32) * ((std::uint64_t{1} << shift) - static_cast<std::uint64_t>(d))) /
            static_cast<std::uint64_t>(d) +
        1);
  }

  // n / divisor for 0 <= n < 2^31.
  INSTANTID_HOST_DEVICE int div(int n) const {
    const std::uint32_t u = static_cast<std::uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const std::uint32_t high = __umulhi(u, multiplier);
#else
    const std::uint32_t high =
        static_cast<std::uint32_t>((static_cast<std::uint64_t>(u) * multiplier) >> 32);
#endif
    return static_cast<int>((high + u) >> shift);
  }
  // n % divisor for 0 <= n < 2^31.
  INSTANTID_HOST_DEVICE int mod(int n) const { return n - div(n) * divisor; }
};

}  // namespace instantid::kernels
