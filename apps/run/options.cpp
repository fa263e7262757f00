#include "apps/run/options.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "engine/check.h"

namespace tessera {

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// Shortest text that reads back as the same value ("0.99", "1e-05"); a float is judged as a
// float, so 0.7f prints as 0.7 rather than 0.699999988.
std::string format_number(double v, bool as_float = false) {
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {  // whole numbers as integers: 10, not 1e+01
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    const double back = std::strtod(buf, nullptr);
    if (as_float ? static_cast<float>(back) == static_cast<float>(v) : back == v) break;
  }
  return buf;
}

bool parse_bool(const std::string& s, bool* out) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return *out = true, true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return *out = false, true;
  return false;
}

// Edit distance, to suggest the flag a user probably meant.
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

Options::Option& Options::Option::min(double v, bool inclusive) {
  has_min = true;
  min_value = v;
  min_inclusive = inclusive;
  return *this;
}

Options::Option& Options::Option::max(double v, bool inclusive) {
  has_max = true;
  max_value = v;
  max_inclusive = inclusive;
  return *this;
}

Options::Option& Options::Option::check(std::function<std::string()> fn) {
  checks.push_back(std::move(fn));
  return *this;
}

Options::Option& Options::Option::required() {
  is_required = true;
  return *this;
}

Options::Options(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {
  add("config", &config_path_, "read `flag = value` lines from FILE (the command line overrides them)");
}

Options::Option& Options::add_option(const std::string& name, Option::Type type, void* target,
                                     const std::string& help) {
  TS_CHECK(find(name) == nullptr, "option --", name, " added twice");
  Option o;
  o.name = name;
  o.help = help;
  o.type = type;
  o.target = target;
  o.source = "default";
  options_.push_back(o);
  options_.back().default_text = value_text(options_.back());
  return options_.back();
}

Options::Option& Options::add(const std::string& name, int64_t* target, const std::string& help) {
  return add_option(name, Option::Type::Int64, target, help);
}
Options::Option& Options::add(const std::string& name, int* target, const std::string& help) {
  return add_option(name, Option::Type::Int32, target, help);
}
Options::Option& Options::add(const std::string& name, double* target, const std::string& help) {
  return add_option(name, Option::Type::Float64, target, help);
}
Options::Option& Options::add(const std::string& name, float* target, const std::string& help) {
  return add_option(name, Option::Type::Float32, target, help);
}
Options::Option& Options::add(const std::string& name, std::string* target, const std::string& help) {
  return add_option(name, Option::Type::String, target, help);
}
Options::Option& Options::choice(const std::string& name, std::string* target,
                                 std::vector<std::string> choices, const std::string& help) {
  Option& o = add_option(name, Option::Type::Choice, target, help);
  o.choices = std::move(choices);
  TS_CHECK(std::find(o.choices.begin(), o.choices.end(), *target) != o.choices.end(),
           "default of --", name, " is not one of its choices");
  return o;
}
Options::Option& Options::flag(const std::string& name, bool* target, const std::string& help) {
  return add_option(name, Option::Type::Bool, target, help);
}

void Options::section(const std::string& title) { sections_[options_.size()] = title; }

Options::Option* Options::find(const std::string& name) {
  for (Option& o : options_)
    if (o.name == name) return &o;
  return nullptr;
}

std::string Options::value_text(const Option& o) const {
  switch (o.type) {
    case Option::Type::Int64: return std::to_string(*static_cast<int64_t*>(o.target));
    case Option::Type::Int32: return std::to_string(*static_cast<int*>(o.target));
    case Option::Type::Float64: return format_number(*static_cast<double*>(o.target));
    case Option::Type::Float32: return format_number(*static_cast<float*>(o.target), true);
    case Option::Type::Bool: return *static_cast<bool*>(o.target) ? "true" : "false";
    case Option::Type::String:
    case Option::Type::Choice: return *static_cast<std::string*>(o.target);
  }
  return "";
}

void Options::set(Option& o, const std::string& value, const std::string& where, bool from_command_line) {
  const std::string flag = "--" + o.name + (from_command_line ? "" : " (" + where + ")");
  switch (o.type) {
    case Option::Type::Int64:
    case Option::Type::Int32: {
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || errno == ERANGE)
        throw UsageError(cat(flag, ": expected an integer, found '", value, "'"));
      if (o.type == Option::Type::Int64) {
        *static_cast<int64_t*>(o.target) = v;
      } else {
        if (v < INT32_MIN || v > INT32_MAX) throw UsageError(cat(flag, ": ", value, " is out of range"));
        *static_cast<int*>(o.target) = static_cast<int>(v);
      }
      break;
    }
    case Option::Type::Float64:
    case Option::Type::Float32: {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !std::isfinite(v))
        throw UsageError(cat(flag, ": expected a number, found '", value, "'"));
      if (o.type == Option::Type::Float64) {
        *static_cast<double*>(o.target) = v;
      } else {
        // Past float's range the cast would give inf (and the saved config null).
        if (std::fabs(v) > std::numeric_limits<float>::max())
          throw UsageError(cat(flag, ": ", value, " is out of range"));
        *static_cast<float*>(o.target) = static_cast<float>(v);
      }
      break;
    }
    case Option::Type::Bool: {
      bool b = false;
      if (!parse_bool(value, &b)) throw UsageError(cat(flag, ": expected true or false, found '", value, "'"));
      *static_cast<bool*>(o.target) = b;
      break;
    }
    case Option::Type::Choice: {
      if (std::find(o.choices.begin(), o.choices.end(), value) == o.choices.end()) {
        std::string list;
        for (const std::string& c : o.choices) list += (list.empty() ? "" : ", ") + c;
        throw UsageError(cat(flag, ": expected one of ", list, "; found '", value, "'"));
      }
      *static_cast<std::string*>(o.target) = value;
      break;
    }
    case Option::Type::String: *static_cast<std::string*>(o.target) = value; break;
  }
  o.source = where;
  if (from_command_line && !given(o.name)) given_.push_back(o.name);
}

void Options::read_config_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw UsageError(cat("--config: expected a file, found a directory: '", path, "'"));
  std::ifstream in(path);
  if (!in) throw UsageError(cat("--config: cannot read '", path, "'"));
  std::string line;
  std::map<std::string, std::string> set_at;  // flag -> the line that set it
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string where = cat(path, ":", number);
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    line = trim(line);
    if (line.empty()) continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos)
      throw UsageError(cat(where, ": expected `flag = value`, found '", line, "'"));
    std::string name = trim(line.substr(0, eq));
    if (name.rfind("--", 0) == 0) name = name.substr(2);
    const std::string value = trim(line.substr(eq + 1));
    Option* o = find(name);
    if (!o) throw UsageError(cat(where, ": unknown flag '", name, "'"));
    if (o->name == "config") throw UsageError(cat(where, ": a config file cannot include another"));
    // Two lines for one flag is a slip (an edit that meant to replace one): neither is taken.
    if (const auto [at, first] = set_at.emplace(o->name, where); !first)
      throw UsageError(cat(where, ": '", o->name, "' is set again (first at ", at->second,
                           "); a config file sets each flag once"));
    if (given(name)) continue;  // the command line wins
    set(*o, value, where, false);
  }
}

bool Options::parse(int argc, const char* const* argv) {
  // Two passes: the command line first (so it wins), then the config file beneath it.
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(help_text().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2)
      throw UsageError(cat("unexpected argument '", arg, "' (flags are --name value; see --help)"));
    std::string name = arg.substr(2), value;
    bool has_value = false;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Option* o = find(name);
    if (!o) {
      std::string hint;
      size_t best = 3;
      for (const Option& c : options_) {
        const size_t d = distance(name, c.name);
        if (d < best) best = d, hint = cat(" (did you mean --", c.name, "?)");
      }
      throw UsageError(cat("unknown flag --", name, hint, "; see --help"));
    }
    if (!has_value && o->type == Option::Type::Bool) {
      value = "true";
    } else if (!has_value) {
      if (i + 1 >= argc) throw UsageError(cat("--", name, ": missing value"));
      value = argv[++i];
    }
    set(*o, value, "command line", true);
  }
  if (!config_path_.empty()) read_config_file(config_path_);
  validate();
  return true;
}

void Options::apply_json(const nlohmann::json& values, const std::string& origin) {
  for (auto it = values.begin(); it != values.end(); ++it) {
    if (it.key() == "config") continue;
    Option* o = find(it.key());
    if (!o) throw UsageError(cat(origin, ": unknown flag '", it.key(), "'"));
    if (o->source != "default") continue;  // the command line or a config file set it
    const nlohmann::json& v = it.value();
    set(*o, v.is_string() ? v.get<std::string>() : v.dump(), origin, false);
  }
}

void Options::validate() const {
  for (const Option& o : options_) {
    const std::string flag = "--" + o.name + (o.source == "command line" || o.source == "default"
                                                   ? "" : " (" + o.source + ")");
    if (o.is_required && o.source == "default") throw UsageError(cat(flag, " is required (see --help)"));
    if (o.number()) {
      const double v = std::strtod(value_text(o).c_str(), nullptr);
      const bool low = o.has_min && (o.min_inclusive ? v < o.min_value : v <= o.min_value);
      const bool high = o.has_max && (o.max_inclusive ? v > o.max_value : v >= o.max_value);
      if (low || high) {
        std::string range;
        if (o.has_min && o.has_max)
          range = cat("in ", o.min_inclusive ? "[" : "(", format_number(o.min_value), ", ",
                      format_number(o.max_value), o.max_inclusive ? "]" : ")");
        else if (o.has_min)
          range = cat(o.min_inclusive ? ">= " : "> ", format_number(o.min_value));
        else
          range = cat(o.max_inclusive ? "<= " : "< ", format_number(o.max_value));
        throw UsageError(cat(flag, ": expected a value ", range, ", found ", value_text(o)));
      }
    }
    for (const auto& fn : o.checks) {
      const std::string expected = fn();
      if (!expected.empty())
        throw UsageError(cat(flag, ": expected ", expected, ", found ", value_text(o)));
    }
  }
}

bool Options::given(const std::string& name) const {
  return std::find(given_.begin(), given_.end(), name) != given_.end();
}

std::string Options::source(const std::string& name) const {
  for (const Option& o : options_)
    if (o.name == name) return o.source;
  return "";
}

nlohmann::json Options::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const Option& o : options_) {
    switch (o.type) {
      case Option::Type::Int64: j[o.name] = *static_cast<int64_t*>(o.target); break;
      case Option::Type::Int32: j[o.name] = *static_cast<int*>(o.target); break;
      case Option::Type::Float64:
      case Option::Type::Float32:
        // Through the shortest decimal text, so 0.7f is written as 0.7, not 0.699999988.
        j[o.name] = std::strtod(value_text(o).c_str(), nullptr);
        break;
      case Option::Type::Bool: j[o.name] = *static_cast<bool*>(o.target); break;
      default: j[o.name] = *static_cast<std::string*>(o.target); break;
    }
  }
  return j;
}

std::string Options::help_text() const {
  std::ostringstream os;
  os << "usage: " << program_ << " [--flag value | --flag=value]...\n" << summary_ << "\n";
  for (size_t i = 0; i < options_.size(); ++i) {
    const Option& o = options_[i];
    auto sec = sections_.find(i);
    if (sec != sections_.end()) os << "\n" << sec->second << ":\n";
    else if (i == 0) os << "\n";
    std::string meta;
    switch (o.type) {
      case Option::Type::Int64:
      case Option::Type::Int32: meta = " N"; break;
      case Option::Type::Float64:
      case Option::Type::Float32: meta = " X"; break;
      case Option::Type::String: meta = o.name == "config" ? " FILE" : " S"; break;
      case Option::Type::Choice:
        for (const std::string& c : o.choices) meta += (meta.empty() ? " " : "|") + c;
        break;
      case Option::Type::Bool: break;
    }
    std::string left = "  --" + o.name + meta;
    if (left.size() < 34) left.resize(34, ' ');
    else left += "\n" + std::string(34, ' ');
    os << left << o.help;
    if (o.is_required) {
      os << " (required)";
    } else if (o.type != Option::Type::Bool) {
      os << " (default: " << (o.default_text.empty() ? "none" : o.default_text) << ")";
    }
    os << "\n";
  }
  os << "  --help                          print this and exit\n";
  return os.str();
}

}  // namespace tessera
