// The model side of `kvasir plan` (cli/plan.cc): a model's config and weight tensors read from a
// config.json, a Hugging Face folder or a GGUF file, and one rank's share of them under the
// engine's shard plan (model/shard_plan.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "model/shard_plan.h"

namespace kvasir::cli {

// A weight tensor as the plan sees it, named and shaped as in GGUF (ne[0] is the row length,
// the input dimension of a matrix).
struct Weight {
  std::string name;
  std::vector<int64_t> ne;
  uint32_t type = 0;  // ggml type id
  int64_t bytes = 0;
};

struct ModelInput {
  model::ModelConfig config;
  std::vector<Weight> weights;
  std::string format;        // "gguf" or "config.json"
  std::string path;          // the file read
  std::string weight_types;  // "f16", or for a GGUF each type's share of the bytes
};

// Reads --model. On failure `exit_code` says whose fault it is: 2 for the user's (a missing path,
// a --weight-dtype that does not fit the model), 1 for a malformed file.
absl::StatusOr<ModelInput> LoadModel(const std::string& model_flag, const std::string& weight_dtype,
                                     int* exit_code);

// What one rank holds of the weights.
struct RankWeights {
  int64_t bytes = 0;
  int64_t params = 0;
  int64_t embedding_bytes = 0;      // the rank's slice of token_embd
  int64_t layer_matmul_params = 0;  // q, k, v, o, gate, up, down of every layer
  int64_t output_params = 0;        // the LM head's slice (token_embd when tied)
};

// The rank's share of every tensor. InvalidArgument (a usage error: this TP size does not fit the
// file) when a row-parallel split falls inside a quantization block; FailedPrecondition when a
// tensor's shape contradicts the config.
absl::StatusOr<RankWeights> ShardWeights(const ModelInput& m, const model::ShardPlan& p);

}  // namespace kvasir::cli
