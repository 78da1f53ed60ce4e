#pragma once
// instantid::Error — the one exception type the library throws.
//
// Messages follow "where: what: got X, expected Y" so a user can act on them without reading our
// code. Library code never prints, exits or aborts; it throws this (host API) or returns a status
// (kernel launchers, C API).

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace instantid {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {

inline void append_all(std::ostringstream&) {}

template <typename T, typename... Rest>
void append_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}

}  // namespace detail

// Builds a message from streamable pieces: make_message("layer ", n, ": got ", x).
template <typename... Parts>
std::string make_message(const Parts&... parts) {
  std::ostringstream out;
  detail::append_all(out, parts...);
  return out.str();
}

// Throws Error("<what>: got <got>, expected <expected>").
template <typename Got, typename Expected>
[[noreturn]] void throw_mismatch(const std::string& what, const Got& got, const Expected& expected) {
  throw Error(make_message(what, ": got ", got, ", expected ", expected));
}

}  // namespace instantid

// Checks a precondition of the public API; the remaining arguments are streamed into the message.
#define INSTANTID_CHECK(condition, ...)                                   \
  do {                                                                    \
    if (!(condition)) throw ::instantid::Error(::instantid::make_message(__VA_ARGS__)); \
  } while (0)
