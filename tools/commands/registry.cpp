#include "commands/registry.hpp"

namespace instantid::cli {

// Function-local so that Registrars in other translation units can use it during static
// initialisation in any order.
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}

}  // namespace instantid::cli
