#pragma once
// A small command-line parser shared by the subcommands: `--name value`, `--name=value`, flags,
// positional arguments and a generated --help. Bad input throws UsageError (exit code 2).

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace instantid::cli {

// A bad command line; main() prints it with a pointer to --help and exits with kExitUsage.
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& message) : std::runtime_error(message) {}
};

class ArgParser {
 public:
  // usage: the synopsis after "instantid <command>", e.g. "--checkpoint CKPT --out O".
  ArgParser(std::string command, std::string usage, std::string description);

  // An option taking a value; `value_name` is shown in the help ("CKPT").
  ArgParser& option(const std::string& name, const std::string& value_name,
                    const std::string& help, std::optional<std::string> default_value = {});
  ArgParser& required(const std::string& name, const std::string& value_name,
                      const std::string& help);
  ArgParser& flag(const std::string& name, const std::string& help);
  ArgParser& positional(const std::string& name, const std::string& help, bool required = true);

  // Parses args; returns false when --help/-h was given (the help was written to `out`).
  // Throws UsageError on unknown options, missing values or missing required arguments.
  bool parse(const std::vector<std::string>& args, std::ostream& out);

  std::string help() const;

  bool has(const std::string& name) const;  // given, or has a default
  std::string get(const std::string& name) const;
  float get_float(const std::string& name) const;
  double get_double(const std::string& name) const;
  int get_int(const std::string& name) const;
  // "0,1" → {0, 1}; "oh,ow" style pairs likewise.
  std::vector<int> get_int_list(const std::string& name) const;
  bool flag_set(const std::string& name) const;

 private:
  struct Spec {
    std::string name;
    std::string value_name;
    std::string help;
    std::optional<std::string> default_value;
    bool required = false;
    bool is_flag = false;
    bool is_positional = false;
  };
  const Spec* find(const std::string& name) const;
  [[noreturn]] void fail(const std::string& message) const;

  std::string command_;
  std::string usage_;
  std::string description_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
};

// Parses a whole string as a number; throws UsageError naming `what` otherwise.
double parse_number(const std::string& text, const std::string& what);
long long parse_integer(const std::string& text, const std::string& what);

}  // namespace instantid::cli
