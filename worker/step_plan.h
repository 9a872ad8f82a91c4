// The host side of a forward step that every runner shares (cpu_model_runner.cc,
// backend_model_runner.cc): checking the batch, reserving KV room, laying its tokens out as rows,
// grouping the sequences by KV policy, filling a layer's LayerInputs, and ending the step.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "model/model_config.h"
#include "worker/llama_weights.h"
#include "worker/model_runner.h"

namespace kvasir::worker {

struct StepPlan {
  std::vector<int32_t> tokens;      // one row per new token, sequence after sequence
  std::vector<int32_t> pos;         // its absolute position
  std::vector<int32_t> logit_rows;  // the rows whose logits the step returns, in order
  std::vector<kvcache::SeqSpan> spans;
  // The spans by KV policy, in order of first appearance: each policy attends over its own.
  std::vector<std::pair<const kvcache::KvPolicy*, std::vector<kvcache::SeqSpan>>> groups;

  int64_t n() const { return static_cast<int64_t>(tokens.size()); }
  int64_t rows() const { return static_cast<int64_t>(logit_rows.size()); }
};

// What a runner checks of the model before it is made: a valid config that the runners can run
// (no linear RoPE scaling yet) and weights bound for every layer.
absl::Status CheckRunnerModel(const model::ModelConfig& config, const LlamaWeights& weights);
// InvalidArgument for a sequence without tokens, one that would pass the context length, or a
// token id outside the vocabulary.
absl::Status CheckStep(const model::ModelConfig& config, std::span<const StepSequence> batch);
// Reserves KV room for the new tokens of every sequence; the first error.
absl::Status ReserveStep(kvcache::KvCache& cache, std::span<const StepSequence> batch);
// Lays the batch out (after the reservation; positions follow each sequence's n_tokens).
void PlanStep(std::span<const StepSequence> batch, StepPlan& plan);
// The inputs of `layer` for the sequences of one policy group, over row-major buffers of the
// step (q [n, q_stride], k and v [n, kv_stride], out like q).
kvcache::LayerInputs LayerInputsOf(const StepPlan& plan, std::span<const kvcache::SeqSpan> spans,
                                   int32_t layer, float* q, float* k, float* v, float* out,
                                   int64_t q_stride, int64_t kv_stride,
                                   kvcache::BackendScratch* scratch);
// After the step: each policy's EndStep, and every sequence's n_tokens advanced.
absl::Status FinishStep(kvcache::KvCache& cache, const StepPlan& plan);

}  // namespace kvasir::worker
