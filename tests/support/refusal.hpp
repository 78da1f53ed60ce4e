#pragma once
// The message of the instantid::Error a call throws, or "" when it returns: tests assert on the
// message a user would see.

#include <string>
#include <utility>

#include "instantid/error.hpp"

namespace instantid::test {

template <typename F>
std::string refusal(F&& call) {
  try {
    std::forward<F>(call)();
  } catch (const instantid::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace instantid::test
