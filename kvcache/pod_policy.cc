// Placeholder until the `pod` policy lands (the KV-compression issue).
#include "kvcache/policies.h"

namespace kvasir::kvcache {

PolicyResult MakePodPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  return absl::UnimplementedError("the pod KV policy is not implemented yet");
}

}  // namespace kvasir::kvcache
