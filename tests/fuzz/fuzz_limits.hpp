#pragma once
// Limits the fuzz targets pass to the parsers. They are tighter than the library defaults so that
// one input can never ask for more than a few hundred MB (libFuzzer's -malloc_limit_mb and
// -rss_limit_mb turn any larger allocation into a finding): a parser that honours its limits
// refuses a hostile size with an Error before allocating.

#include <cstdint>


namespace instantid::fuzz {

constexpr std::int64_t kMaxElements = std::int64_t{1} << 22;  // 16 MB of float32 per tensor

}  // namespace instantid::fuzz
