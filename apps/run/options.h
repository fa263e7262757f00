// Command-line options shared by every program: GNU long flags bound to typed fields of the
// program's own config struct.
//
//   Options o("byol", "BYOL self-supervised pre-training with a smoothed teacher.");
//   o.add("batch-size", &cfg.batch_size, "images per step").min(1);
//   o.add("lr", &cfg.lr, "base learning rate").min(0, /*inclusive=*/false);
//   o.choice("smoothing", &cfg.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
//   o.flag("eval-only", &cfg.eval_only, "evaluate a finished run (with --resume)");
//   if (!o.parse(argc, argv)) return 0;   // --help printed
//
// The field's value when add() is called is the default; --help prints it. Values come from,
// in rising priority: the defaults, `--config FILE` (lines `flag = value`, # comments), the
// command line (`--flag value` or `--flag=value`). Every problem is a UsageError naming the
// flag (and the file and line for a config file), thrown before the program touches anything
// on disk, so a bad invocation never overwrites a run. An option marked required() has no
// default: leaving it unset is a UsageError too.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tessera {

class Options {
 public:
  class Option {
   public:
    // Range checks on numeric options, applied after all sources are merged.
    Option& min(double v, bool inclusive = true);
    Option& max(double v, bool inclusive = true);
    // Any other check: return "" when the value is fine, else what was expected.
    Option& check(std::function<std::string()> fn);
    // The program cannot run without it: a source other than the default must set it.
    Option& required();

   private:
    friend class Options;
    enum class Type { Int64, Int32, Float64, Float32, String, Bool, Choice };
    bool integer() const { return type == Type::Int64 || type == Type::Int32; }
    bool number() const { return integer() || type == Type::Float64 || type == Type::Float32; }
    std::string name, help;
    Type type = Type::String;
    void* target = nullptr;
    std::vector<std::string> choices;
    std::string default_text;
    bool has_min = false, min_inclusive = true, has_max = false, max_inclusive = true;
    double min_value = 0, max_value = 0;
    std::vector<std::function<std::string()>> checks;
    bool is_required = false;
    std::string source;  // "default", "FILE:LINE" or "command line"
  };

  Options(std::string program, std::string summary);

  Option& add(const std::string& name, int64_t* target, const std::string& help);
  Option& add(const std::string& name, int* target, const std::string& help);
  Option& add(const std::string& name, double* target, const std::string& help);
  Option& add(const std::string& name, float* target, const std::string& help);
  Option& add(const std::string& name, std::string* target, const std::string& help);
  Option& choice(const std::string& name, std::string* target, std::vector<std::string> choices,
                 const std::string& help);
  // A switch: `--name` sets it; `--name=false` and `name = false` in a config file clear it.
  Option& flag(const std::string& name, bool* target, const std::string& help);
  // A heading printed by --help before the options added after it.
  void section(const std::string& title);

  // Parses argv. Returns false when --help was printed (the program exits 0).
  bool parse(int argc, const char* const* argv);
  // Applies `flag = value` pairs (a saved configuration) beneath the command line and the
  // config file: values either set keep their value. `origin` names where they came from.
  void apply_json(const nlohmann::json& values, const std::string& origin);

  bool given(const std::string& name) const;  // set by the command line (not file/default)
  bool set_by_user(const std::string& name) const { return source(name) != "default"; }  // command line or file
  std::string source(const std::string& name) const;  // "default", "FILE:LINE" or "command line"
  nlohmann::json to_json() const;             // every option with its resolved value
  std::string help_text() const;
  // Re-runs the required, range and custom checks (parse() does this; call again after
  // apply_json).
  void validate() const;

 private:
  Option& add_option(const std::string& name, Option::Type type, void* target, const std::string& help);
  Option* find(const std::string& name);
  void set(Option& o, const std::string& value, const std::string& where, bool from_command_line);
  void read_config_file(const std::string& path);
  std::string value_text(const Option& o) const;

  std::string program_, summary_;
  std::deque<Option> options_;  // a deque: the Option& handed out stay valid as it grows
  std::map<size_t, std::string> sections_;  // option index -> heading before it
  std::vector<std::string> given_;
  std::string config_path_;
};

}  // namespace tessera
