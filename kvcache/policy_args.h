// Parsing of KV policy spec strings: "name" or "name:key=value,key=value". Each policy reads its
// parameters through typed getters that remember what was read, and Finish() refuses keys the
// policy did not ask for, so a typo never silently falls back to a default.
//
//   KVASIR_ASSIGN_OR_RETURN(PolicyArgs args, PolicyArgs::Parse("streaming:sink=4,window=252"));
//   KVASIR_ASSIGN_OR_RETURN(int32_t sink, args.Int("sink", 4));
//   KVASIR_RETURN_IF_ERROR(args.Finish());
//
// Parameters that name a file (pod's groups=, lococo's weights=) are read through File(), and only
// when the spec comes from the process's own command line: a spec from a request
// (PolicySource::kRequest) that names a file is refused before any policy code runs, so no client
// can make a server open a path (see IsFileParameter).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvasir::kvcache {

// Where a spec string comes from, which decides whether it may name files.
enum class PolicySource {
  kTrusted,  // the command line of the process that loads it (--kv, --kv-policy NAME=SPEC)
  kRequest,  // a client's request: file parameters are refused, nothing is opened
};

// True for the parameter names that hold a file path, in any policy.
bool IsFileParameter(std::string_view key);
// The fixed refusal of a request spec that names a file; it names the parameter, never its value.
absl::Status FileParameterRefused(std::string_view key);

class PolicyArgs {
 public:
  static absl::StatusOr<PolicyArgs> Parse(std::string_view spec,
                                          PolicySource source = PolicySource::kTrusted);

  const std::string& name() const { return name_; }
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  // Typed getters with a default for absent keys. InvalidArgument for malformed values and for
  // values outside [min, max].
  absl::StatusOr<int32_t> Int(const std::string& key, int32_t def, int32_t min = 0,
                              int32_t max = 1 << 30);
  absl::StatusOr<double> Float(const std::string& key, double def, double min = -1e300,
                               double max = 1e300);
  absl::StatusOr<std::string> String(const std::string& key, const std::string& def);
  absl::StatusOr<bool> Bool(const std::string& key, bool def);
  // A file path ("" when absent). The key must be one of IsFileParameter's; PermissionDenied when
  // the spec came from a request (Parse refuses those already; this is the second lock).
  absl::StatusOr<std::string> File(const std::string& key);
  // The parameters as given, in key order, with every file path replaced by "<file>": what a
  // server may show its clients of a configured policy.
  std::string Redacted() const;
  // InvalidArgument naming the keys that no getter asked for.
  absl::Status Finish() const;

 private:
  std::string name_;
  PolicySource source_ = PolicySource::kTrusted;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

}  // namespace kvasir::kvcache
