#include "kvcache/policy_args.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/check.h"
#include "common/strings.h"

namespace kvasir::kvcache {

bool IsFileParameter(std::string_view key) {
  // Every parameter that names a file, in any policy; File() accepts only these. Future file
  // parameters (DMC checkpoints, trained adapters) are added here first.
  for (std::string_view k : {"groups", "weights", "checkpoint", "adapter", "file", "path"}) {
    if (key == k) return true;
  }
  return false;
}

absl::Status FileParameterRefused(std::string_view key) {
  return absl::PermissionDeniedError(absl::StrCat(
      "kv_policy may not name a file (parameter '", ToAbsl(key),
      "'): files are server configuration. Select a policy the server was started with "
      "(--kv-policy NAME=SPEC; GET /v1/models lists them) or give a spec without files."));
}

absl::StatusOr<PolicyArgs> PolicyArgs::Parse(std::string_view spec, PolicySource source) {
  PolicyArgs args;
  args.source_ = source;
  const size_t colon = spec.find(':');
  args.name_ = std::string(absl::StripAsciiWhitespace(ToAbsl(spec.substr(0, colon))));
  if (args.name_.empty()) return absl::InvalidArgumentError("empty KV policy spec");
  if (colon == std::string_view::npos) return args;
  const std::string_view rest = spec.substr(colon + 1);
  if (rest.empty()) return args;
  for (absl::string_view item : absl::StrSplit(ToAbsl(rest), ',')) {
    item = absl::StripAsciiWhitespace(item);
    const size_t eq = item.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", args.name_, "': '", item, "' is not key=value"));
    }
    std::string key(absl::StripAsciiWhitespace(item.substr(0, eq)));
    std::string value(absl::StripAsciiWhitespace(item.substr(eq + 1)));
    // Refused whatever the policy: before any factory could look at the value.
    if (source == PolicySource::kRequest && IsFileParameter(key)) {
      return FileParameterRefused(key);
    }
    if (!args.values_.emplace(key, value).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", args.name_, "': '", key, "' is given twice"));
    }
  }
  return args;
}

absl::StatusOr<int32_t> PolicyArgs::Int(const std::string& key, int32_t def, int32_t min,
                                        int32_t max) {
  used_.insert(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  int32_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy '", name_, "': ", key,
                                                   " must be an integer, got '", it->second, "'"));
  }
  if (v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy '", name_, "': ", key,
                                                   " must be in [", min, ", ", max, "], got ", v));
  }
  return v;
}

absl::StatusOr<double> PolicyArgs::Float(const std::string& key, double def, double min,
                                         double max) {
  used_.insert(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  double v;
  if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy '", name_, "': ", key,
                                                   " must be a number, got '", it->second, "'"));
  }
  if (v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy '", name_, "': ", key,
                                                   " must be in [", min, ", ", max, "], got ", v));
  }
  return v;
}

absl::StatusOr<std::string> PolicyArgs::String(const std::string& key, const std::string& def) {
  used_.insert(key);
  auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

absl::StatusOr<bool> PolicyArgs::Bool(const std::string& key, bool def) {
  used_.insert(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  if (it->second == "true" || it->second == "1") return true;
  if (it->second == "false" || it->second == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat("KV policy '", name_, "': ", key,
                                                 " must be true or false, got '", it->second, "'"));
}

absl::StatusOr<std::string> PolicyArgs::File(const std::string& key) {
  KVASIR_CHECK(IsFileParameter(key));
  used_.insert(key);
  auto it = values_.find(key);
  if (it == values_.end()) return std::string();
  if (source_ != PolicySource::kTrusted) return FileParameterRefused(key);
  return it->second;
}

std::string PolicyArgs::Redacted() const {
  std::string out = name_;
  const char* sep = ":";
  for (const auto& [key, value] : values_) {
    absl::StrAppend(&out, sep, key, "=", IsFileParameter(key) ? "<file>" : value);
    sep = ",";
  }
  return out;
}

absl::Status PolicyArgs::Finish() const {
  std::string unknown;
  for (const auto& [key, value] : values_) {
    if (!used_.count(key)) absl::StrAppend(&unknown, unknown.empty() ? "" : ", ", key);
  }
  if (!unknown.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV policy '", name_, "' has no parameter ", unknown, " (see --help)"));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::kvcache
