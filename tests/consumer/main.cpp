// Uses the installed headers and libraries: the SDXL layout table and a checked error.
#include <cstdio>

#include "instantid/error.hpp"
#include "instantid/layout.hpp"
#include "instantid/patch.hpp"

int main() {
  const instantid::ModelLayout layout = instantid::ModelLayout::sdxl();
  bool threw = false;
  try {
    (void)instantid::parse_block_type("sideways");
  } catch (const instantid::Error&) {
    threw = true;
  }
  const instantid::SigmaRange range{};
  std::printf("instantid consumer: %d layers, first width %d, bad block rejected %s, range ok %s\n",
              layout.num_layers(), layout.layers.front().width, threw ? "yes" : "no",
              range.contains(1.0) ? "yes" : "no");
  return layout.num_layers() == 70 && threw && range.contains(1.0) ? 0 : 1;
}
