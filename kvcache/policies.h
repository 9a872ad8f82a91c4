// Factories of the KV policies, one per spec name, each in its own file. ParsePolicy
// (kvcache/policy.cc) dispatches on the name; every factory reads its parameters from `args`
// and calls args.Finish() so that unknown parameters are refused.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "kvcache/policy_args.h"

namespace kvasir::kvcache {

using PolicyResult = absl::StatusOr<std::shared_ptr<const KvPolicy>>;

PolicyResult MakeFullPolicy(PolicyArgs& args, const KvGeometry& geometry);  // full_policy.cc
PolicyResult MakeStreamingPolicy(PolicyArgs& args,
                                 const KvGeometry& geometry);                 // streaming_policy.cc
PolicyResult MakeH2oPolicy(PolicyArgs& args, const KvGeometry& geometry);     // h2o_policy.cc
PolicyResult MakeDmcPolicy(PolicyArgs& args, const KvGeometry& geometry);     // dmc_policy.cc
PolicyResult MakePodPolicy(PolicyArgs& args, const KvGeometry& geometry);     // pod_policy.cc
PolicyResult MakeLococoPolicy(PolicyArgs& args, const KvGeometry& geometry);  // lococo_policy.cc

}  // namespace kvasir::kvcache
