#pragma once
// The `instantid` command line is a set of subcommands; each file in tools/commands/ registers one
// with a static Registrar, so adding a command is adding a file.

#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace instantid::cli {

// Exit codes a script can rely on.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;     // the operation failed (instantid::Error, I/O)
constexpr int kExitUsage = 2;       // bad command line
constexpr int kExitNoFace = 3;      // `embed`: no face in at least one image

struct Command {
  std::string name;
  std::string summary;  // one line for `instantid --help`
  // args excludes the program and command names; writes results to out, messages to err.
  std::function<int(const std::vector<std::string>& args, std::ostream& out, std::ostream& err)> run;
};

std::vector<Command>& registry();

struct Registrar {
  explicit Registrar(Command command) { registry().push_back(std::move(command)); }
};

}  // namespace instantid::cli
