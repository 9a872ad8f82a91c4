// The append path of the `full` policy (and of the PoD calibration recorder): RoPE and append the
// new tokens to the K and V tables of each (sequence, KV head), then attend causally over the
// tables. The host plans (table lengths, the layer's CSR views, the slot writes, one attention
// item per (sequence, KV head)) and the backend runs it: Rope, WriteSlots, one Attention batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

// Reserves room for n_new more slots in every K and V table of `seq`.
absl::Status ReserveAppend(KvCache& cache, SequenceKv& seq, int32_t n_new);

// Optional per-(sequence, KV head) hook of AppendAndAttend, called after the layer's attention
// with the probabilities' column sums over that head's table (when `want_col_sums`).
struct AttendObserver {
  bool want_col_sums = false;
  // Called on the thread that called AppendAndAttend, one call per (span index, kv head), with
  // host memory (downloaded from the backend).
  virtual void OnColumnSums(size_t span, int32_t kv_head, const float* col_sums, int32_t n) {}
  virtual ~AttendObserver() = default;
};

// For every sequence span of the layer: rotates q and k, appends k and v at the end of the
// tables, and attends each new token over the table prefix up to itself. The column sums an
// observer asks for live in in.scratch (or a buffer of the call). FailedPrecondition when a
// table was not reserved (nothing is changed then); ResourceExhausted when the backend has no
// memory for the column sums.
absl::Status AppendAndAttend(KvCache& cache, const LayerInputs& in, kernels::Backend& backend,
                             AttendObserver* observer = nullptr);

}  // namespace kvasir::kvcache
