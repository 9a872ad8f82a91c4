// PlanShard (see shard_plan.h).
#include "model/shard_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvasir::model {

absl::StatusOr<ShardPlan> PlanShard(const ModelConfig& c, int32_t size, int32_t rank,
                                    bool replicate_vocab) {
  if (size < 1 || size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel size ", size, " is out of range [1, 1024]"));
  }
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel rank ", rank, " is outside [0, ", size, ")"));
  }
  if (c.n_head % size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel size ", size, " does not divide the model's ", c.n_head,
                     " attention heads (each rank computes whole heads)"));
  }
  if (c.n_head_kv % size != 0 && size % c.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel size ", size,
                     " neither divides nor is a multiple of the model's ", c.n_head_kv,
                     " KV heads (KV heads are split across ranks, or each replicated on the same "
                     "number of ranks)"));
  }
  if (c.n_ff < size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor-parallel size ", size, " is larger than the intermediate size ", c.n_ff));
  }
  ShardPlan p;
  p.size = size;
  p.rank = rank;
  const int32_t heads = c.n_head / size;
  p.head_begin = rank * heads;
  p.head_end = p.head_begin + heads;
  if (c.n_head_kv % size == 0) {
    const int32_t kv = c.n_head_kv / size;
    p.kv_head_begin = rank * kv;
    p.kv_head_end = p.kv_head_begin + kv;
  } else {
    p.kv_replicas = size / c.n_head_kv;
    p.kv_head_begin = rank / p.kv_replicas;
    p.kv_head_end = p.kv_head_begin + 1;
  }
  // The intermediate rows in near-equal parts (the first n_ff % size ranks one more): the sum
  // after the down projection does not need equal parts.
  const int32_t ff = c.n_ff / size, extra = c.n_ff % size;
  p.ff_begin = rank * ff + std::min(rank, extra);
  p.ff_end = p.ff_begin + ff + (rank < extra ? 1 : 0);
  p.vocab_replicated = replicate_vocab && size > 1;
  p.vocab_shard = p.vocab_replicated ? c.n_vocab : (c.n_vocab + size - 1) / size;
  p.vocab_begin = p.vocab_replicated ? 0 : std::min(c.n_vocab, rank * p.vocab_shard);
  p.vocab_end = std::min(c.n_vocab, p.vocab_begin + p.vocab_shard);
  return p;
}

ModelConfig ShardConfig(const ModelConfig& config, const ShardPlan& plan) {
  ModelConfig c = config;
  c.n_head = plan.n_head();
  c.n_head_kv = plan.n_head_kv();
  c.n_ff = plan.n_ff();
  return c;
}

}  // namespace kvasir::model
