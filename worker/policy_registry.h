// The KV policies a server offers: the ones configured on its command line, loaded and validated
// once at start-up, and the file-less specs its clients name, each parsed once. Every request that
// selects the same policy gets the same policy object, so the forward pass batches their
// sequences into one attention call per layer (it groups sequences by policy object).
//
//   --kv-policy pod-cal=pod:groups=/srv/pod.json    configured, by name (files allowed here)
//   --kv-policy streaming:sink=4,window=252         configured, named by its spec
//   request "kv_policy": "pod-cal"                  the configured object
//   request "kv_policy": "h2o:budget=128"           parsed once as a request spec (no files)
//   request "kv_policy": "pod:groups=/etc/shadow"   PermissionDenied, nothing opened
//
// Thread contract: every method is safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::worker {

// One --kv-policy value: "NAME=SPEC" or a bare SPEC (then the name is the canonical spec).
struct PolicyConfig {
  std::string name;  // "" for a bare spec
  std::string spec;
};
// Splits a --kv-policy value. "NAME=SPEC" when the text before the first '=' is a name (letters,
// digits, '-', '_', '.'); otherwise the whole value is a spec. A name that is a policy kind (such
// as "full") is refused by PolicyRegistry::Create: a request naming it would mean that kind.
PolicyConfig ParsePolicyConfig(std::string_view value);

// What a server shows its clients of a configured policy: never a file path.
struct PolicyListing {
  std::string name;
  std::string kind;         // "full", "pod", ...
  std::string spec;         // canonical, with file paths replaced by "<file>"
  bool is_default = false;  // used by requests that name no policy
};

class PolicyRegistry {
 public:
  // Request specs kept parsed at most (beyond, they are parsed per request and not shared).
  static constexpr size_t kMaxRequestSpecs = 64;

  // Loads every configured policy (files are read here, once). `default_policy` is a configured
  // name or a spec; "" means the first configured policy, or "full" when there is none.
  // InvalidArgument (with the file's name: this is the operator's own command line) when a
  // policy does not load, a name is malformed or given twice.
  // `fits_model` (optional) checks that a policy may run on the server's weights
  // (Engine::CheckAdapter: a model merged with a retrofit adapter runs only the policy that names
  // it); configured policies that fail it fail Create, request policies that fail it are refused
  // (InvalidArgument).
  using ModelCheck = std::function<absl::Status(const kvcache::KvPolicy&)>;
  static absl::StatusOr<std::unique_ptr<PolicyRegistry>> Create(
      const kvcache::KvGeometry& geometry, const std::vector<PolicyConfig>& configured,
      const std::string& default_policy, ModelCheck fits_model = nullptr);

  // The policy a request's kv_policy selects: "" the default, a configured name, or a spec
  // without file parameters. InvalidArgument for an unknown name or a bad spec,
  // PermissionDenied for a spec that names a file (nothing is opened).
  absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> Resolve(std::string_view kv_policy);
  // The configured policy whose spec() is `spec` (files included), else Resolve(spec): how a
  // tensor-parallel rank finds the policy of a sequence rank 0 sends it by spec.
  absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> ResolveSpec(std::string_view spec);

  const std::vector<PolicyListing>& listing() const { return listing_; }
  const std::string& default_name() const { return default_name_; }
  // Request specs parsed and kept so far (for tests).
  size_t request_specs() const;

 private:
  explicit PolicyRegistry(const kvcache::KvGeometry& geometry) : geometry_(geometry) {}
  // Loads `spec` (files allowed) and lists it under `name` ("" = its redacted canonical spec);
  // returns the name. `what` prefixes errors. With `reuse`, a name configured already is kept.
  absl::StatusOr<std::string> Add(const std::string& name, const std::string& spec,
                                  const std::string& what, bool reuse);

  // fits_model_'s verdict, as InvalidArgument prefixed with `what` (OK without a check).
  absl::Status FitsModel(const kvcache::KvPolicy& policy, std::string_view what) const;

  kvcache::KvGeometry geometry_;
  ModelCheck fits_model_;
  // Configured policies by name (a bare spec is named by its canonical spec), set at Create.
  std::map<std::string, std::shared_ptr<const kvcache::KvPolicy>, std::less<>> configured_;
  std::vector<PolicyListing> listing_;
  std::string default_name_;
  std::shared_ptr<const kvcache::KvPolicy> default_;

  mutable absl::Mutex mu_;
  // Request specs as given, and by canonical spec (so "streaming" and "streaming:sink=4" share).
  std::map<std::string, std::shared_ptr<const kvcache::KvPolicy>, std::less<>> by_text_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<const kvcache::KvPolicy>, std::less<>> by_spec_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace kvasir::worker
