// Placeholder until the `h2o` policy lands (the KV-compression issue).
#include "kvcache/policies.h"

namespace kvasir::kvcache {

PolicyResult MakeH2oPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  return absl::UnimplementedError("the h2o KV policy is not implemented yet");
}

}  // namespace kvasir::kvcache
