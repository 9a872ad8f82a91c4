// `kvasir eval`: the quality cost of a KV policy against the full cache on a text, and a
// synthetic passkey-retrieval ("needle") test. docs/compression.md explains the measures:
//
// - Perplexity over sliding windows of `window` tokens moved by `stride` (the first window scores
//   all its tokens, later ones only their last `stride`), with the policy and with `full`.
// - Greedy agreement: at the end of each window the full cache generates `continuation` greedy
//   tokens; the policy is then fed the same tokens (teacher forcing) and agreement is the
//   fraction of positions where its arg-max equals the full cache's token. Teacher forcing keeps
//   one early divergence from counting against every later position.
// - KV bytes: what the policy's cache holds at the end of each window (its tables' slots), summed
//   over windows, against what the full cache holds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"

namespace kvasir::worker {

struct EvalOptions {
  std::string kv_policy = "full";
  int32_t window = 1024;
  int32_t stride = 0;         // 0: = window
  int32_t max_tokens = 8192;  // evaluate the first max_tokens tokens of the text (0: all)
  int32_t continuation = 32;  // greedy tokens per window for the agreement measure
  int32_t chunk = 256;        // prefill chunk
  // The engine the policy runs on when it needs a model of its own (one merged with the
  // policy's retrofit adapter); the full cache always runs on the engine given. nullptr: the same.
  Engine* policy_engine = nullptr;
  // Progress (optional): windows done, windows in all.
  std::function<void(int, int)> progress;
};

struct EvalResult {
  std::string policy;
  int64_t tokens = 0;  // tokens of the text evaluated
  int32_t windows = 0;
  int64_t scored_tokens = 0;
  double perplexity = 0;
  double full_perplexity = 0;
  double greedy_agreement = 0;  // in [0, 1]
  int64_t agreement_tokens = 0;
  int64_t kv_bytes = 0;  // summed over windows, at each window's end
  int64_t full_kv_bytes = 0;
  double kv_ratio() const { return full_kv_bytes > 0 ? double(kv_bytes) / full_kv_bytes : 1; }
};

absl::StatusOr<EvalResult> RunEval(Engine& engine, const std::string& text,
                                   const EvalOptions& options);

struct NeedleOptions {
  std::string kv_policy = "full";
  std::vector<int32_t> lengths = {512, 1024, 2048};  // prompt lengths in tokens (approximate)
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};  // where the passkey sits
  int32_t trials = 2;                                        // passkeys per (length, depth)
  uint64_t seed = 1;
  Engine* policy_engine = nullptr;  // as EvalOptions::policy_engine
  std::function<void(int, int)> progress;
};

struct NeedleCell {
  int32_t length = 0;  // the prompt's real length in tokens
  double depth = 0;
  int32_t found = 0;       // trials whose passkey appeared in the answer
  int32_t full_found = 0;  // the same with the full cache
  int32_t trials = 0;
};

struct NeedleResult {
  std::string policy;
  std::vector<NeedleCell> cells;
  double accuracy() const;
  double full_accuracy() const;
};

absl::StatusOr<NeedleResult> RunNeedle(Engine& engine, const NeedleOptions& options);

}  // namespace kvasir::worker
