// FastDivisor (kernels/instantid/kernels/fast_divisor.hpp) against the / and % operators, on the
// host: the kernel runs the same arithmetic with __umulhi.
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <vector>

#include "instantid/kernels/fast_divisor.hpp"

using instantid::kernels::FastDivisor;

TEST_CASE("FastDivisor: every n < 70000 for divisors 1 .. 300", "[kernels][cpu]") {
  for (int d = 1; d <= 300; ++d) {
    const FastDivisor f(d);
    int mismatches = 0;
    for (int n = 0; n < 70000; ++n) {
      if (f.div(n) != n / d || f.mod(n) != n % d) ++mismatches;
    }
    INFO("divisor " << d);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("FastDivisor: large operands, powers of two and their neighbours", "[kernels][cpu]") {
  const int big = 0x7fffffff;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> any_n(0, big), any_d(1, big);
  std::vector<int> divisors = {1, 2, 3, 7, 64, 65, 1000, 65535, 65536, 65537, big - 1, big};
  for (int s = 1; s < 31; ++s) {
    divisors.push_back((1 << s) - 1);
    divisors.push_back(1 << s);
    divisors.push_back((1 << s) + 1);
  }
  for (int i = 0; i < 200; ++i) divisors.push_back(any_d(rng));
  for (int d : divisors) {
    const FastDivisor f(d);
    std::vector<int> numerators = {0, 1, d - 1, d, big - 1, big};
    if (d < big) numerators.push_back(d + 1);
    for (int i = 0; i < 2000; ++i) numerators.push_back(any_n(rng));
    int mismatches = 0;
    for (int n : numerators) {
      if (n < 0) continue;
      if (f.div(n) != n / d || f.mod(n) != n % d) ++mismatches;
    }
    INFO("divisor " << d);
    CHECK(mismatches == 0);
  }
}
