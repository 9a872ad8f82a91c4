// Placeholder until the `streaming` policy lands (the KV-compression issue).
#include "kvcache/policies.h"

namespace kvasir::kvcache {

PolicyResult MakeStreamingPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  return absl::UnimplementedError("the streaming KV policy is not implemented yet");
}

}  // namespace kvasir::kvcache
