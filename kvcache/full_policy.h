// `full`: every token's K and V in every layer and head; the reference the other policies are
// measured against.
#pragma once

#include <string>

#include "kvcache/policy.h"

namespace kvasir::kvcache {

class FullPolicy : public KvPolicy {
 public:
  std::string spec() const override { return "full"; }
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;
};

}  // namespace kvasir::kvcache
