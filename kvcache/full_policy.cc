#include "kvcache/full_policy.h"

#include "common/status_macros.h"
#include "kvcache/attention.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {

absl::Status FullPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  return ReserveAppend(cache, seq, n_new);
}

absl::Status FullPolicy::Attend(KvCache& cache, const LayerInputs& in,
                                kernels::Backend& backend) const {
  return AppendAndAttend(cache, in, backend);
}

PolicyResult MakeFullPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  KVASIR_RETURN_IF_ERROR(args.Finish());
  return std::make_shared<FullPolicy>();
}

}  // namespace kvasir::kvcache
