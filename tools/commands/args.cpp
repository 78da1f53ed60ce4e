#include "commands/args.hpp"

#include <cerrno>
#include <cstdlib>
#include <ostream>
#include <sstream>

namespace instantid::cli {

ArgParser::ArgParser(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

ArgParser& ArgParser::option(const std::string& name, const std::string& value_name,
                             const std::string& help, std::optional<std::string> default_value) {
  specs_.push_back(Spec{name, value_name, help, std::move(default_value), false, false, false});
  return *this;
}

ArgParser& ArgParser::required(const std::string& name, const std::string& value_name,
                               const std::string& help) {
  specs_.push_back(Spec{name, value_name, help, std::nullopt, true, false, false});
  return *this;
}

ArgParser& ArgParser::flag(const std::string& name, const std::string& help) {
  specs_.push_back(Spec{name, "", help, std::nullopt, false, true, false});
  return *this;
}

ArgParser& ArgParser::positional(const std::string& name, const std::string& help, bool required) {
  specs_.push_back(Spec{name, name, help, std::nullopt, required, false, true});
  return *this;
}

const ArgParser::Spec* ArgParser::find(const std::string& name) const {
  for (const Spec& spec : specs_) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

void ArgParser::fail(const std::string& message) const {
  throw UsageError(message);
}

bool ArgParser::parse(const std::vector<std::string>& args, std::ostream& out) {
  values_.clear();
  std::vector<const Spec*> positionals;
  for (const Spec& spec : specs_) {
    if (spec.is_positional) positionals.push_back(&spec);
  }
  std::size_t next_positional = 0;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out << help();
      return false;
    }
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      std::string name = arg.substr(2);
      std::optional<std::string> inline_value;
      const std::size_t eq = name.find('=');
      if (eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const Spec* spec = find(name);
      if (spec == nullptr || spec->is_positional) fail("unknown option --" + name);
      if (values_.count(name) != 0) fail("--" + name + " given twice");
      if (spec->is_flag) {
        if (inline_value) fail("--" + name + " takes no value");
        values_[name] = "1";
        continue;
      }
      if (inline_value) {
        values_[name] = *inline_value;
      } else {
        if (i + 1 >= args.size()) fail("--" + name + " needs a value (" + spec->value_name + ")");
        values_[name] = args[++i];
      }
      continue;
    }
    if (next_positional >= positionals.size()) fail("unexpected argument '" + arg + "'");
    values_[positionals[next_positional++]->name] = arg;
  }
  for (const Spec& spec : specs_) {
    if (spec.required && values_.count(spec.name) == 0) {
      fail(spec.is_positional ? "missing argument " + spec.name
                              : "missing --" + spec.name + " " + spec.value_name);
    }
  }
  return true;
}

std::string ArgParser::help() const {
  std::ostringstream out;
  out << "usage: instantid " << command_ << " " << usage_ << "\n\n" << description_ << "\n";
  bool any = false;
  for (const Spec& spec : specs_) {
    if (!any) out << "\narguments:\n";
    any = true;
    std::string left = spec.is_positional ? spec.name
                       : spec.is_flag     ? "--" + spec.name
                                          : "--" + spec.name + " " + spec.value_name;
    out << "  " << left;
    if (left.size() < 28) out << std::string(28 - left.size(), ' ');
    else out << "\n" << std::string(30, ' ');
    out << spec.help;
    if (spec.required && !spec.is_positional) out << " (required)";
    if (spec.default_value) out << " (default: " << *spec.default_value << ")";
    out << "\n";
  }
  out << "  --help                      this text\n";
  return out.str();
}

bool ArgParser::has(const std::string& name) const {
  if (values_.count(name) != 0) return true;
  const Spec* spec = find(name);
  return spec != nullptr && spec->default_value.has_value();
}

std::string ArgParser::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  const Spec* spec = find(name);
  if (spec != nullptr && spec->default_value) return *spec->default_value;
  fail("missing --" + name);
}

bool ArgParser::flag_set(const std::string& name) const { return values_.count(name) != 0; }

double parse_number(const std::string& text, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) {
    throw UsageError(what + ": got '" + text + "', expected a number");
  }
  return value;
}

long long parse_integer(const std::string& text, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) {
    throw UsageError(what + ": got '" + text + "', expected an integer");
  }
  return value;
}

double ArgParser::get_double(const std::string& name) const {
  return parse_number(get(name), "--" + name);
}

float ArgParser::get_float(const std::string& name) const {
  return static_cast<float>(get_double(name));
}

int ArgParser::get_int(const std::string& name) const {
  const long long value = parse_integer(get(name), "--" + name);
  if (value < -2147483647LL || value > 2147483647LL) {
    fail("--" + name + ": got " + std::to_string(value) + ", expected a 32-bit integer");
  }
  return static_cast<int>(value);
}

std::vector<int> ArgParser::get_int_list(const std::string& name) const {
  std::vector<int> result;
  const std::string text = get(name);
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const long long value = parse_integer(text.substr(start, comma - start),
                                          "--" + name);
    result.push_back(static_cast<int>(value));
    start = comma + 1;
  }
  return result;
}

}  // namespace instantid::cli
