// `instantid <command> [arguments]`: dispatches to the commands registered in tools/commands/.
// Exit codes (commands/registry.hpp): 0 ok, 1 the operation failed, 2 bad command line, 3 no face.
// Errors go to stderr as "instantid <command>: error: <message>" so scripts can match them.

#include <algorithm>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "commands/args.hpp"
#include "commands/registry.hpp"
#include "instantid/error.hpp"

namespace {

void print_usage(std::ostream& out) {
  using instantid::cli::registry;
  std::vector<const instantid::cli::Command*> commands;
  for (const auto& command : registry()) commands.push_back(&command);
  std::sort(commands.begin(), commands.end(),
            [](const auto* a, const auto* b) { return a->name < b->name; });
  out << "usage: instantid <command> [arguments]   (instantid <command> --help for details)\n\n"
         "InstantID face-identity conditioning for C++ diffusion engines.\n\ncommands:\n";
  for (const auto* command : commands) {
    out << "  " << command->name << std::string(command->name.size() < 10 ? 10 - command->name.size() : 1, ' ')
        << command->summary << "\n";
  }
  out << "\nexit codes: 0 ok, 1 failed, 2 bad command line, 3 no face found (embed)\n";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace instantid::cli;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    print_usage(std::cerr);
    return kExitUsage;
  }
  const std::string name = args.front();
  if (name == "--help" || name == "-h" || name == "help") {
    print_usage(std::cout);
    return kExitOk;
  }
  if (name == "--version") {
    std::cout << "instantid " << INSTANTID_VERSION << "\n";
    return kExitOk;
  }
  const Command* command = nullptr;
  for (const auto& candidate : registry()) {
    if (candidate.name == name) command = &candidate;
  }
  if (command == nullptr) {
    std::cerr << "instantid: error: unknown command '" << name << "'\n";
    print_usage(std::cerr);
    return kExitUsage;
  }
  args.erase(args.begin());
  try {
    return command->run(args, std::cout, std::cerr);
  } catch (const UsageError& e) {
    std::cerr << "instantid " << name << ": usage error: " << e.what()
              << "\n(see 'instantid " << name << " --help')\n";
    return kExitUsage;
  } catch (const instantid::Error& e) {
    std::cerr << "instantid " << name << ": error: " << e.what() << "\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "instantid " << name << ": error: " << e.what() << "\n";
    return kExitFailure;
  }
}
