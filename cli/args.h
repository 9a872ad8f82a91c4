// A small declarative parser for the options of one subcommand, with generated --help. Accepts
// `--name value` and `--name=value`; boolean flags take no value (`--json`), or `--name=false`.
// Repeatable options collect every value.
//
//   ArgParser p("kvasir generate", "Generate text from a prompt.");
//   std::string model = "default";
//   p.AddString("model", &model, "PATH", "a .gguf file, a Hugging Face folder or 'default'");
//   KVASIR_RETURN_IF_ERROR(p.Parse(argc, argv));
//   if (p.help_requested()) { std::cout << p.Help(); return 0; }
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace kvasir::cli {

class ArgParser {
 public:
  ArgParser(std::string usage, std::string summary)
      : usage_(std::move(usage)), summary_(std::move(summary)) {}

  void AddString(std::string name, std::string* out, std::string value_name, std::string help);
  void AddStrings(std::string name, std::vector<std::string>* out, std::string value_name,
                  std::string help);  // repeatable
  void AddInt(std::string name, int64_t* out, std::string help);
  void AddInt32(std::string name, int32_t* out, std::string help);
  void AddUint64(std::string name, uint64_t* out, std::string help);
  void AddFloat(std::string name, float* out, std::string help);
  void AddBool(std::string name, bool* out, std::string help);
  // Free text after the options list in --help (examples, policy lists).
  void AddEpilog(std::string text) { epilog_ += text; }

  // Parses argv[first..argc). Unknown options, missing or malformed values and stray positional
  // arguments are InvalidArgument with a message that names the option.
  absl::Status Parse(int argc, char** argv, int first = 1);
  bool help_requested() const { return help_; }
  bool was_set(std::string_view name) const;
  std::string Help() const;

 private:
  struct Option {
    std::string name;
    std::string value_name;  // empty for flags
    std::string help;
    std::string default_text;
    std::function<absl::Status(std::string_view)> set;
    bool is_flag = false;
    bool seen = false;
  };
  Option& Add(std::string name, std::string value_name, std::string help, std::string def);

  std::string usage_;
  std::string summary_;
  std::string epilog_;
  std::vector<Option> options_;
  bool help_ = false;
};

}  // namespace kvasir::cli
