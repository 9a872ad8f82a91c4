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
    // A name that is a policy kind ("full=...") is kept as a name, so that PolicyRegistry::Create
    // refuses it with its reason (no spec has the form "kind=...").
    if (IsName(name)) {
      return {std::string(name), std::string(Strip(v.substr(eq + 1)))};
    }
  }
  return {"", std::string(v)};
}

absl::Status PolicyRegistry::FitsModel(const kvcache::KvPolicy& policy,
                                       std::string_view what) const {
  if (!fits_model_) return absl::OkStatus();
  absl::Status s = fits_model_(policy);
  if (s.ok()) return s;
  return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), ": ", s.message()));
}

absl::StatusOr<std::string> PolicyRegistry::Add(const std::string& name, const std::string& spec,
                                                const std::string& what, bool reuse) {
  auto policy = kvcache::ParsePolicy(spec, geometry_, kvcache::PolicySource::kTrusted);
  if (!policy.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", policy.status().message()));
  }
  KVASIR_RETURN_IF_ERROR(FitsModel(**policy, what));
  const std::string canonical = (*policy)->spec();
  PolicyListing l;
  l.spec = RedactedSpec(canonical);
  l.name = name.empty() ? l.spec : name;
  l.kind = canonical.substr(0, canonical.find(':'));
  if (!configured_.emplace(l.name, *policy).second) {
    if (reuse) return l.name;  // the same spec is configured already
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-policy: '", l.name, "' is configured twice"));
  }
  // A request naming the same spec (without files) shares the configured object.
  by_spec_.emplace(canonical, *policy);
  listing_.push_back(std::move(l));
  return listing_.back().name;
}

absl::StatusOr<std::unique_ptr<PolicyRegistry>> PolicyRegistry::Create(
    const kvcache::KvGeometry& geometry, const std::vector<PolicyConfig>& configured,
    const std::string& default_policy, ModelCheck fits_model) {
  std::unique_ptr<PolicyRegistry> r(new PolicyRegistry(geometry));
  r->fits_model_ = std::move(fits_model);
  for (const PolicyConfig& c : configured) {
    if (!c.name.empty() && (!IsName(c.name) || kvcache::IsPolicyKind(c.name))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-policy: '", c.name,
                       "' is not a policy name (letters, digits, '-', '_', '.'; not a policy kind "
                       "such as 'full')"));
    }
    KVASIR_RETURN_IF_ERROR(r->Add(c.name, c.spec,
                                  absl::StrCat("--kv-policy ", c.name.empty() ? c.spec : c.name),
                                  /*reuse=*/false)
                               .status());
  }
  std::string def = default_policy;
  if (def.empty()) def = r->listing_.empty() ? "full" : r->listing_.front().name;
  if (r->configured_.count(def)) {
    r->default_name_ = def;
  } else {
    // A default given as a spec of its own is configured too (files allowed: command line).
    KVASIR_ASSIGN_OR_RETURN(r->default_name_, r->Add("", def, "default KV policy", /*reuse=*/true));
  }
  r->default_ = r->configured_.at(r->default_name_);
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
  KVASIR_RETURN_IF_ERROR(FitsModel(*policy, "kv_policy"));
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

absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> PolicyRegistry::ResolveSpec(
    std::string_view spec) {
  for (const auto& [name, policy] : configured_) {
    if (policy->spec() == spec) return policy;
  }
  return Resolve(spec);
}

}  // namespace kvasir::worker
