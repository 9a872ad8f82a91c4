// `kvasir bench engine`: the engine's speed on this machine, measured as docs/performance.md
// describes: prefill and decode tokens/s at batch 1, 4 and 16, the machine's
// memory read bandwidth (and the last-level cache's, when the weights fit in it), and how close
// batch-1 decode comes to the bound that applies. Every figure is the median of
// several runs after a warm-up run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"

namespace kvasir::worker {

struct EngineBenchOptions {
  int32_t prefill_tokens = 512;  // prompt length of the prefill figure
  int32_t decode_tokens = 128;   // tokens generated per sequence
  int32_t batch_prompt = 128;    // prompt length of each sequence in the batched figures
  std::vector<int32_t> batches = {1, 4, 16};
  int32_t repeats = 3;  // timed runs per figure (the median is reported)
  std::string kv_policy = "full";
  // Extra figures for KV policies: decode tokens/s after a prompt of each of these lengths.
  std::vector<int32_t> long_contexts;  // e.g. {2048, 4096}
  int64_t capacity_budget_bytes = 0;   // > 0: count the sequences of long_contexts[0] that fit
  bool measure_bandwidth = true;
};

struct EngineBenchResult {
  std::string model;
  std::string isa;
  int64_t repacked_weight_bytes = 0;  // weights in the kernels' decode layout (ModelRunner)
  std::string device;                 // "cpu", or the GPU backend's description
  int threads = 0;
  std::string kv_policy;
  double prefill_tps = 0;
  double decode_tps_b1 = 0;
  std::vector<std::pair<int32_t, double>> decode_tps_batched;  // (streams, aggregate tokens/s)
  double mem_read_gbps = 0;  // DRAM: a buffer of twice the last-level cache, >= 256 MiB
  int64_t llc_bytes = 0;     // the last-level cache (0: unknown)
  // The last-level cache's read rate over a buffer of the weights' size, measured when the
  // weights fit in 3/4 of it (0: not measured); then decode is bounded by it, not by DRAM.
  double cache_read_gbps = 0;
  std::string bound = "dram";          // the bound that applies: "dram" or "cache"
  int64_t decode_bytes_per_token = 0;  // weights read per batch-1 step
  double decode_bw_fraction = 0;       // decode_tps_b1 * bytes / the bound's rate
  std::vector<std::pair<int32_t, double>> decode_tps_at_context;  // (context, tokens/s)
  std::vector<std::pair<int32_t, double>> kv_ratio_at_context;    // (context, bytes / full)
  int64_t sequences_in_budget = 0;  // sequences of long_contexts[0] tokens that fit
  int64_t full_sequences_in_budget = 0;
};

absl::StatusOr<EngineBenchResult> RunEngineBench(Engine& engine, const EngineBenchOptions& options);

}  // namespace kvasir::worker
