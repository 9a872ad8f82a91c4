// The weights of a Llama model bound for the CPU kernels: views into the memory-mapped model
// files (no copy), except the small norm vectors, which are converted to f32.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/types.h"
#include "model/model_files.h"
#include "model/shard_plan.h"

namespace kvasir::worker {

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  kernels::WeightView wq;            // [n_head * head_dim, n_embd]
  kernels::WeightView wk;            // [n_head_kv * head_dim, n_embd]
  kernels::WeightView wv;            // [n_head_kv * head_dim, n_embd]
  kernels::WeightView wo;            // [n_embd, n_head * head_dim]
  const float* ffn_norm = nullptr;   // [n_embd]
  kernels::WeightView gate;          // [n_ff, n_embd]
  kernels::WeightView up;            // [n_ff, n_embd]
  kernels::WeightView down;          // [n_embd, n_ff]
};

struct LlamaWeights {
  kernels::WeightView tok_embd;  // [n_vocab, n_embd]
  const float* output_norm = nullptr;
  kernels::WeightView output;  // [n_vocab, n_embd]; tok_embd when tied
  std::vector<LayerWeights> layers;
  std::vector<std::vector<float>> owned;  // f32 copies of the norm vectors
  // Copies of the column slices a tensor-parallel rank keeps (o and down), so that it holds
  // only its part of them in memory; every other matrix is a view into the mapped files.
  std::vector<std::vector<uint8_t>> owned_slices;
  int64_t bytes = 0;  // bytes of all matrices (of this rank's shard)
};

// Unmaps the pages wholly inside [begin, end) of a read-only file mapping: they leave the
// process's resident set (and come back from the file if touched again). Never for owned memory.
void GiveBackMappedPages(const void* begin, const void* end);

// progress(done_bytes, total_bytes) is called while the weights are paged in (optional).
using LoadProgress = std::function<void(int64_t done, int64_t total)>;

// Binds every tensor the config calls for, checking shapes against it. With `prefault`, reads
// every page of the weights once (with progress), so the first request does not pay for disk.
// With a sharded `plan` (model/shard_plan.h), only that rank's part: row slices are views, column
// slices (o, down) are copied (their pages of the mapping are then given back); InvalidArgument
// when a column slice does not fall on the quantization blocks of its tensor.
absl::StatusOr<LlamaWeights> BindLlamaWeights(const model::ModelFiles& files, bool prefault,
                                              const LoadProgress& progress = nullptr,
                                              const model::ShardPlan* plan = nullptr);

}  // namespace kvasir::worker
