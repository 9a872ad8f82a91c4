// Parsing of KV policy spec strings: "name" or "name:key=value,key=value". Each policy reads its
// parameters through typed getters that remember what was read, and Finish() refuses keys the
// policy did not ask for, so a typo never silently falls back to a default.
//
//   KVASIR_ASSIGN_OR_RETURN(PolicyArgs args, PolicyArgs::Parse("streaming:sink=4,window=252"));
//   KVASIR_ASSIGN_OR_RETURN(int32_t sink, args.Int("sink", 4));
//   KVASIR_RETURN_IF_ERROR(args.Finish());
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvasir::kvcache {

class PolicyArgs {
 public:
  static absl::StatusOr<PolicyArgs> Parse(std::string_view spec);

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
  // InvalidArgument naming the keys that no getter asked for.
  absl::Status Finish() const;

 private:
  std::string name_;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

}  // namespace kvasir::kvcache
