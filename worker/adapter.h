// Retrofit adapters: low-rank (LoRA) corrections of a model's projections, trained by
// train/retrofit.py so that a KV method (DMC, PoD) works on a model that was not trained for it,
// and merged into the weights when the engine loads (docs/retrofit.md).
//
// The file is safetensors: for each adapted projection NAME (GGUF tensor names without
// ".weight", e.g. "blk.0.attn_q") NAME.lora_a [rank, in] and NAME.lora_b [out, rank], F32; the
// merged weight is W + (alpha / rank) * B A. Metadata (strings): kvasir.format "lora-1",
// kvasir.method, kvasir.kv_policy, kvasir.ratio, kvasir.lora_rank, kvasir.lora_alpha,
// kvasir.layout "gguf" (the row order of q and k the adapter was trained on). Optional
// check.tokens [T] (I32) and check.logits [T, vocab] (F32): the trained model's logits over those
// tokens with its policy, which the engine must reproduce (tests/worker/adapter_test.cc).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "worker/llama_weights.h"

namespace kvasir::worker {

struct LoraPair {
  int32_t layer = 0;
  std::string projection;  // "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", ...
  int64_t rows = 0;        // out
  int64_t cols = 0;        // in
  int32_t rank = 0;
  std::vector<float> a;  // [rank, cols]
  std::vector<float> b;  // [rows, rank]
};

struct Adapter {
  std::string method;                 // "dmc" or "pod"
  std::string kv_policy;              // the policy it was trained for, e.g. "dmc:mode=learned"
  std::string ratio;                  // the compression it was trained for, as written ("4")
  float scale = 1;                    // alpha / rank
  std::vector<LoraPair> projections;  // layer-major, in the order of LoraPair::projection
  std::vector<int32_t> check_tokens;
  std::vector<float> check_logits;  // [check_tokens.size(), n_vocab]
};

// Reads and validates an adapter against the model it is for: every tensor F32 with the shapes of
// the model's projections, a known layout and format. InvalidArgument naming the file's base name
// and what is wrong, never its contents (a file that cannot be opened or parsed as safetensors
// also carries the reader's message, which names the path as given).
absl::StatusOr<Adapter> LoadAdapter(const std::string& path, const model::ModelConfig& config);

// The adapter a policy spec names, "" for none: dmc's and pod's weights=FILE. Commands that run
// one policy (kvasir generate, eval) load their engine with it.
absl::StatusOr<std::string> AdapterOfSpec(std::string_view spec);

// Merges the adapter into the weights: each adapted projection becomes an f32 copy of W + scale
// B A (quantized weights are dequantized first), held in weights->owned_slices. InvalidArgument
// for a sharded (tensor-parallel) set of weights: not supported yet.
absl::Status MergeAdapter(const Adapter& adapter, LlamaWeights* weights, bool sharded);

}  // namespace kvasir::worker
