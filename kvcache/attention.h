// Shared building blocks of the policies that keep keys in the order tokens arrived (full,
// streaming, h2o): RoPE and append the new tokens to the K and V tables of each
// (sequence, KV head), then attend causally over the tables.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/ops.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

// Reserves room for n_new more slots in every K and V table of `seq`.
absl::Status ReserveAppend(KvCache& cache, SequenceKv& seq, int32_t n_new);

// Optional per-(sequence, KV head) hook of AppendAndAttend, called after the attention of that
// head with the probabilities' column sums over its table (when `want_col_sums`).
struct AttendObserver {
  bool want_col_sums = false;
  // Called from worker threads, one call per (span index, kv head), never twice for the same pair.
  virtual void OnColumnSums(size_t span, int32_t kv_head, const float* col_sums, int32_t n) {}
  virtual ~AttendObserver() = default;
};

// For every sequence span of the layer: rotates q and k, appends k and v at the end of the
// tables, and attends each new token over the table prefix up to itself. Parallel over
// (sequence, KV head) pairs.
absl::Status AppendAndAttend(KvCache& cache, const LayerInputs& in, kernels::cpu::CpuContext& ctx,
                             AttendObserver* observer = nullptr);

}  // namespace kvasir::kvcache
