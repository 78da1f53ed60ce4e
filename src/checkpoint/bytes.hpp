#pragma once
// Little-endian reads and overflow-checked arithmetic for the checkpoint parsers. Callers check
// bounds before reading.

#include <cstdint>
#include <cstring>

namespace instantid::checkpoint_detail {

inline std::uint16_t read_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline std::uint32_t read_u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
inline std::uint64_t read_u64(const std::uint8_t* p) {
  return static_cast<std::uint64_t>(read_u32(p)) |
         (static_cast<std::uint64_t>(read_u32(p + 4)) << 32);
}

// a * b and a + b into out; false on overflow.
template <typename T>
bool checked_mul(T a, T b, T* out) {
  return !__builtin_mul_overflow(a, b, out);
}
template <typename T>
bool checked_add(T a, T b, T* out) {
  return !__builtin_add_overflow(a, b, out);
}

}  // namespace instantid::checkpoint_detail
