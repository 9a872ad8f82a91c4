// Placeholder until the `dmc` policy lands (the KV-compression issue).
#include "kvcache/policies.h"

namespace kvasir::kvcache {

PolicyResult MakeDmcPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  return absl::UnimplementedError("the dmc KV policy is not implemented yet");
}

}  // namespace kvasir::kvcache
