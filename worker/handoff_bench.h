// `kvasir bench handoff`: what a prefill -> decode hand-off costs on this machine, per KV policy.
// For each policy it prefills a prompt, pushes the sequence's KV to a cachestore (codec blocks,
// two-phase puts, over UCX when the store offers it), pulls it back into a new sequence
// (verified), and reports the bytes moved per prompt token against the policy's own KV bytes, the
// push and pull times and GB/s, and whether one decode step after the pull gives the same logits,
// bit for bit, as one after the original prefill. Each time is the median of several hand-offs of
// different prompts (the store keeps what it was given, so a prompt is never pushed twice).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cachestore/client.h"
#include "worker/engine.h"

namespace kvasir::worker {

struct HandoffBenchOptions {
  int32_t prompt_tokens = 2048;
  std::vector<std::string> policies = {"full",
                                       "streaming:sink=4,window=508",
                                       "h2o:budget=512,recent=64",
                                       "dmc:mode=free,ratio=4",
                                       "pod:sink=4,window=508",
                                       "lococo:slots=512,chunk=64"};
  int32_t repeats = 3;  // hand-offs per policy (the median is reported)
};

struct HandoffBenchRow {
  std::string policy;  // canonical spec
  int64_t tokens = 0;
  int64_t kv_bytes = 0;    // what the policy holds for the prompt (KvUsage::bytes)
  int64_t full_bytes = 0;  // what a full cache holds
  int64_t wire_bytes = 0;  // block bytes moved one way (payload and headers)
  int64_t blocks = 0;
  double push_s = 0, pull_s = 0;  // medians
  bool exact = false;  // the decode step after the pull gave the original's logits bit for bit
  double wire_bytes_per_token() const { return tokens > 0 ? double(wire_bytes) / tokens : 0; }
  double overhead() const { return kv_bytes > 0 ? double(wire_bytes) / kv_bytes : 0; }
};

struct HandoffBenchResult {
  std::string model;
  std::string data_path;  // the store client's ("ucx[...]" or "rpc")
  std::vector<HandoffBenchRow> rows;
};

absl::StatusOr<HandoffBenchResult> RunHandoffBench(Engine& engine, cachestore::StoreClient& store,
                                                   const HandoffBenchOptions& options);

}  // namespace kvasir::worker
