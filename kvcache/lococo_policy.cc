// Placeholder until the `lococo` policy lands (the KV-compression issue).
#include "kvcache/policies.h"

namespace kvasir::kvcache {

PolicyResult MakeLococoPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  return absl::UnimplementedError("the lococo KV policy is not implemented yet");
}

}  // namespace kvasir::kvcache
