#include "cli/args.h"

#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"

namespace kvasir::cli {

ArgParser::Option& ArgParser::Add(std::string name, std::string value_name, std::string help,
                                  std::string def) {
  Option& o = options_.emplace_back();
  o.name = std::move(name);
  o.value_name = std::move(value_name);
  o.help = std::move(help);
  o.default_text = std::move(def);
  return o;
}

void ArgParser::AddString(std::string name, std::string* out, std::string value_name,
                          std::string help) {
  Option& o = Add(std::move(name), std::move(value_name), std::move(help), *out);
  o.set = [out](std::string_view v) {
    *out = std::string(v);
    return absl::OkStatus();
  };
}

void ArgParser::AddStrings(std::string name, std::vector<std::string>* out, std::string value_name,
                           std::string help) {
  Option& o = Add(std::move(name), std::move(value_name), std::move(help) + " (repeatable)", "");
  o.set = [out](std::string_view v) {
    out->emplace_back(v);
    return absl::OkStatus();
  };
}

namespace {

// The setter of an integer option: the whole value must parse as a T.
template <typename T>
std::function<absl::Status(std::string_view)> IntegerSetter(T* out, std::string name) {
  return [out, name = std::move(name)](std::string_view v) {
    if (!absl::SimpleAtoi(ToAbsl(v), out)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, " wants ", std::is_signed_v<T> ? "an integer" : "a non-negative integer",
          ", got '", ToAbsl(v), "'"));
    }
    return absl::OkStatus();
  };
}

}  // namespace

void ArgParser::AddInt(std::string name, int64_t* out, std::string help) {
  Add(name, "N", std::move(help), absl::StrCat(*out)).set = IntegerSetter(out, name);
}

void ArgParser::AddInt32(std::string name, int32_t* out, std::string help) {
  Add(name, "N", std::move(help), absl::StrCat(*out)).set = IntegerSetter(out, name);
}

void ArgParser::AddUint64(std::string name, uint64_t* out, std::string help) {
  Add(name, "N", std::move(help), absl::StrCat(*out)).set = IntegerSetter(out, name);
}

void ArgParser::AddFloat(std::string name, float* out, std::string help) {
  Option& o = Add(name, "X", std::move(help), absl::StrFormat("%g", *out));
  o.set = [out, name](std::string_view v) {
    if (!absl::SimpleAtof(ToAbsl(v), out) || !std::isfinite(*out)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " wants a number, got '", ToAbsl(v), "'"));
    }
    return absl::OkStatus();
  };
}

void ArgParser::AddBool(std::string name, bool* out, std::string help) {
  Option& o = Add(name, "", std::move(help), "");
  o.is_flag = true;
  o.set = [out, name](std::string_view v) {
    if (v.empty() || v == "true" || v == "1") {
      *out = true;
    } else if (v == "false" || v == "0") {
      *out = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " is a flag (true or false), got '", ToAbsl(v), "'"));
    }
    return absl::OkStatus();
  };
}

absl::Status ArgParser::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      continue;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", ToAbsl(arg),
                                                     "' (options start with --; see --help)"));
    }
    std::string_view name = arg.substr(2);
    std::string_view value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    // Accept --max_tokens for --max-tokens.
    std::string normalized(name);
    for (char& ch : normalized) {
      if (ch == '_') ch = '-';
    }
    Option* opt = nullptr;
    for (Option& o : options_) {
      if (o.name == normalized) opt = &o;
    }
    if (opt == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", normalized, " (see --help)"));
    }
    if (!has_value && !opt->is_flag) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("--", opt->name, " needs a value"));
      }
      value = argv[++i];
    }
    if (absl::Status s = opt->set(value); !s.ok()) return s;
    opt->seen = true;
  }
  return absl::OkStatus();
}

bool ArgParser::was_set(std::string_view name) const {
  for (const Option& o : options_) {
    if (o.name == name) return o.seen;
  }
  return false;
}

std::string ArgParser::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n\n", summary_, "\n\noptions:\n");
  for (const Option& o : options_) {
    std::string left = absl::StrCat("  --", o.name);
    if (!o.is_flag) absl::StrAppend(&left, " ", o.value_name);
    std::string help = o.help;
    if (!o.default_text.empty()) absl::StrAppend(&help, " [default: ", o.default_text, "]");
    if (left.size() < 26) {
      absl::StrAppend(&out, absl::StrFormat("%-26s%s\n", left, help));
    } else {
      absl::StrAppend(&out, left, "\n", std::string(26, ' '), help, "\n");
    }
  }
  absl::StrAppend(&out, "  --help                  show this help\n");
  if (!epilog_.empty()) absl::StrAppend(&out, "\n", epilog_);
  return out;
}

}  // namespace kvasir::cli
