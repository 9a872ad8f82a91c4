#include "worker/policy_registry.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::worker {
namespace {

std::string_view Strip(std::string_view s) { return ToStd(absl::StripAsciiWhitespace(ToAbsl(s))); }

bool IsName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// The listing form of a canonical spec: file paths replaced by "<file>".
std::string RedactedSpec(const std::string& spec) {
  auto args = kvcache::PolicyArgs::Parse(spec);
  return args.ok() ? args->Redacted() : std::string("<unprintable>");
}

}  // namespace

PolicyConfig ParsePolicyConfig(std::string_view value) {
  const std::string_view v = Strip(value);
  const size_t eq = v.find('=');
  if (eq != std::string_view::npos) {
    const std::string_view name = Strip(v.substr(0, eq));
    if (IsName(name) && !kvcache::IsPolicyKind(name)) {
      return {std::string(name), std::string(Strip(v.substr(eq + 1)))};
    }
  }
  return {"", std::string(v)};
}

absl::StatusOr<std::unique_ptr<PolicyRegistry>> PolicyRegistry::Create(
    const kvcache::KvGeometry& geometry, const std::vector<PolicyConfig>& configured,
    const std::string& default_policy) {
  std::unique_ptr<PolicyRegistry> r(new PolicyRegistry(geometry));
  for (const PolicyConfig& c : configured) {
    if (!c.name.empty() && (!IsName(c.name) || kvcache::IsPolicyKind(c.name))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-policy: '", c.name,
                       "' is not a policy name (letters, digits, '-', '_', '.'; not a policy kind "
                       "such as 'full')"));
    }
    auto policy = kvcache::ParsePolicy(c.spec, geometry, kvcache::PolicySource::kTrusted);
    if (!policy.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv-policy ", c.name.empty() ? c.spec : c.name, ": ", policy.status().message()));
    }
    const std::string spec = (*policy)->spec();
    PolicyListing l;
    l.spec = RedactedSpec(spec);
    l.name = c.name.empty() ? l.spec : c.name;
    l.kind = std::string(spec.substr(0, spec.find(':')));
    if (!r->configured_.emplace(l.name, *policy).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-policy: '", l.name, "' is configured twice"));
    }
    // A request naming the same spec (without files) shares the configured object.
    r->by_spec_.emplace(spec, *policy);
    r->listing_.push_back(std::move(l));
  }
  std::string def = default_policy;
  if (def.empty()) def = r->listing_.empty() ? "full" : r->listing_.front().name;
  if (auto it = r->configured_.find(def); it != r->configured_.end()) {
    r->default_name_ = it->first;
    r->default_ = it->second;
  } else {
    // A default given as a spec of its own is configured too (files allowed: command line).
    auto policy = kvcache::ParsePolicy(def, geometry, kvcache::PolicySource::kTrusted);
    if (!policy.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("default KV policy: ", policy.status().message()));
    }
    const std::string spec = (*policy)->spec();
    PolicyListing l;
    l.spec = RedactedSpec(spec);
    l.name = l.spec;
    l.kind = std::string(spec.substr(0, spec.find(':')));
    if (auto it = r->configured_.find(l.name); it != r->configured_.end()) {
      r->default_ = it->second;  // the same spec configured under its own name
    } else {
      r->configured_.emplace(l.name, *policy);
      r->by_spec_.emplace(spec, *policy);
      r->listing_.push_back(l);
      r->default_ = *policy;
    }
    r->default_name_ = l.name;
  }
  for (PolicyListing& l : r->listing_) l.is_default = l.name == r->default_name_;
  return r;
}

absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> PolicyRegistry::Resolve(
    std::string_view kv_policy) {
  const std::string_view text = Strip(kv_policy);
  if (text.empty()) return default_;
  if (auto it = configured_.find(text); it != configured_.end()) return it->second;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = by_text_.find(text); it != by_text_.end()) return it->second;
  }
  if (IsName(text) && !kvcache::IsPolicyKind(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_policy: no policy named '", ToAbsl(text),
                     "' is configured on this server (GET /v1/models lists them)"));
  }
  // Parsed outside the lock: a request spec names no file, so this is quick.
  KVASIR_ASSIGN_OR_RETURN(auto policy,
                          kvcache::ParsePolicy(text, geometry_, kvcache::PolicySource::kRequest));
  absl::MutexLock lock(&mu_);
  if (auto it = by_spec_.find(policy->spec()); it != by_spec_.end()) {
    policy = it->second;
  } else if (by_spec_.size() < configured_.size() + kMaxRequestSpecs) {
    by_spec_.emplace(policy->spec(), policy);
  }
  if (by_text_.size() < kMaxRequestSpecs) by_text_.emplace(std::string(text), policy);
  return policy;
}

size_t PolicyRegistry::request_specs() const {
  absl::MutexLock lock(&mu_);
  return by_text_.size();
}

}  // namespace kvasir::worker
