// The tensor-parallel shard plan (Megatron-style; docs/parallelism.md): which part of each weight
// and of the KV cache one rank of a group of `size` holds.
//
//   q, k, v    column-parallel by head: rank r computes its query heads and its KV heads
//   o          row-parallel (the columns of its query heads), then an all-reduce (sum)
//   gate, up   column-parallel (a slice of the n_ff intermediate rows; near-equal slices when the
//              size does not divide n_ff, as long as the down projection's quantization blocks
//              allow the cut, which BindLlamaWeights checks)
//   down       row-parallel (the same slice of its columns), then an all-reduce
//   embedding  vocabulary-parallel: each rank looks up the rows of its slice, zero for the others,
//              then an all-reduce; the output layer computes the logits of its slice, then an
//              all-gather
//   norms      replicated
//
// KV heads are split across ranks when the group size divides them; when the group is larger
// than the number of KV heads (and a multiple of it), each KV head is replicated on
// size / n_head_kv ranks, each with its own query heads of that head's group (the rule vLLM
// uses). Other sizes are refused, naming the reason.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace kvasir::model {

struct ShardPlan {
  int32_t size = 1;  // ranks in the group
  int32_t rank = 0;
  int32_t head_begin = 0, head_end = 0;        // query heads [begin, end)
  int32_t kv_head_begin = 0, kv_head_end = 0;  // KV heads
  int32_t ff_begin = 0, ff_end = 0;            // intermediate rows of gate/up, columns of down
  int32_t vocab_begin = 0, vocab_end = 0;  // embedding rows, output rows (the last may be short)
  int32_t vocab_shard = 0;                 // rows per rank (ceil(n_vocab / size))

  int32_t n_head() const { return head_end - head_begin; }
  int32_t n_head_kv() const { return kv_head_end - kv_head_begin; }
  int32_t n_ff() const { return ff_end - ff_begin; }
  int32_t n_vocab() const { return vocab_end - vocab_begin; }
  int32_t kv_replicas = 1;  // ranks that hold the same KV heads (> 1: replicated)
  // The embedding and output layer whole on every rank (no collective for them, more memory);
  // else split by vocabulary rows (the default).
  bool vocab_replicated = false;
  bool sharded() const { return size > 1; }
};

// The plan of `rank` in a group of `size` for `config`. InvalidArgument naming the reason when
// the model cannot be split that way (heads not divisible, a KV-head count that neither divides
// nor is divided by the size, more ranks than intermediate rows).
absl::StatusOr<ShardPlan> PlanShard(const ModelConfig& config, int32_t size, int32_t rank,
                                    bool replicate_vocab = false);

// The config of what one rank computes: its heads, KV heads and intermediate size (the
// vocabulary, embedding width and layers stay those of the model).
ModelConfig ShardConfig(const ModelConfig& config, const ShardPlan& plan);

}  // namespace kvasir::model
