// `h2o:budget=B,recent=R` (H2O, Heavy-Hitter Oracle, arXiv 2306.14048): every (layer, KV head)
// keeps at most B tokens: the R newest and the "heavy hitters" with the largest accumulated
// attention, i.e. the sum over every query that saw the token of the softmax probabilities the
// head's GQA group gave it (summed over the group's query heads). Tokens are processed one at a
// time whatever the engine's chunking: the token is appended (B + 1 slots for a moment), attends
// over what is kept, its probabilities are added to the scores, and if more than B are held the
// token with the lowest score outside the R newest is evicted (ties: the oldest). The evicted
// slot is refilled with the newest token, so slot order is not token order; the state keeps each
// slot's token index and score.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/policy.h"

namespace kvasir::kvcache {

// Per-sequence state: per (layer, KV head), for each slot of the tables, the token it holds and
// its accumulated attention.
class H2oState : public PolicyState {
 public:
  struct Head {
    std::vector<int32_t> token;  // [slots] token index in the sequence
    std::vector<float> score;    // [slots] accumulated attention
  };
  H2oState(int32_t n_layer, int32_t n_head_kv)
      : n_layer_(n_layer),
        n_head_kv_(n_head_kv),
        heads_(static_cast<size_t>(n_layer) * n_head_kv) {}
  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }
  Head& head(int32_t layer, int32_t h) { return heads_[layer * n_head_kv_ + h]; }
  const Head& head(int32_t layer, int32_t h) const { return heads_[layer * n_head_kv_ + h]; }

 private:
  int32_t n_layer_;
  int32_t n_head_kv_;
  std::vector<Head> heads_;
};

class H2oPolicy : public KvPolicy {
 public:
  // 1 <= budget, 0 <= recent <= budget (MakeH2oPolicy validates spec strings).
  H2oPolicy(int32_t budget, int32_t recent) : budget_(budget), recent_(recent) {}

  std::string spec() const override;
  std::unique_ptr<PolicyState> NewState(const KvGeometry& geometry) const override;
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                       int64_t n_tokens) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;
  // Frees the page of the transient (B + 1)-th slot.
  absl::Status EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  // Format (little-endian): "H2OS", version 1, n_layer, n_head_kv, budget, recent, then per
  // (layer, head): n, n token indices, n scores (f32 bits).
  absl::Status SaveState(const SequenceKv& seq, std::string& out) const override;
  absl::Status LoadState(std::string_view in, SequenceKv& seq) const override;
  bool reads_whole_query_group() const override { return true; }

 protected:
  std::optional<StateLayout> state_layout() const override;

 public:
  int32_t budget() const { return budget_; }
  int32_t recent() const { return recent_; }

 private:
  int32_t budget_;
  int32_t recent_;
};

}  // namespace kvasir::kvcache
