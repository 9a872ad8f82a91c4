// `lococo:slots=M,chunk=B[,weights=FILE][,lambda=X]` (LoCoCo, arXiv 2406.05317, as the released
// code VITA-Group/LoCoCo computes it). Every (layer, KV head) holds at most M compressed slots
// plus the tokens of the current chunk of B tokens. Tokens are grouped in chunks of B by their
// index in the sequence (whatever the engine's step sizes): token i of a chunk attends over the
// compressed slots and the chunk's tokens up to itself; the column sums of the chunk's attention
// probabilities (summed over the GQA group's query heads) are the heavy-hitter scores hh. When a
// chunk is complete and more than M slots are held, the slots are compressed to M:
//   M_c = M / 2 fused slots, M_h = M - M_c heavy hitters.
//   H = the M_h slots of largest hh (ties: lower slot first), kept verbatim in slot order;
//   R = the other S' slots in order; sel = the M_c of R with largest hh, sorted by slot;
//   Wc = softmax_s(ReLU(Conv1d([K_R; V_R]))) [M_c, S'],  Wr[m] = onehot(sel_m),
//   W = (1 - λ) Wr + λ Wc;  new slots = [K_H; W K_R] and [V_H; W V_R].
// Keys are cached after RoPE, new tokens keep their absolute positions, and fused keys are never
// re-rotated. Without a weights file λ = 0: the training-free heavy-hitter selection mode.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/lococo_weights.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

// Per-sequence state: per (layer, KV head) the partial column sums hh of the current chunk's
// attention over the table's slots (empty between chunks).
class LococoState : public PolicyState {
 public:
  LococoState(int32_t n_layer, int32_t n_head_kv)
      : n_layer_(n_layer), n_head_kv_(n_head_kv), hh_(static_cast<size_t>(n_layer) * n_head_kv) {}
  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }
  std::vector<float>& hh(int32_t layer, int32_t h) { return hh_[layer * n_head_kv_ + h]; }
  const std::vector<float>& hh(int32_t layer, int32_t h) const {
    return hh_[layer * n_head_kv_ + h];
  }

 private:
  int32_t n_layer_;
  int32_t n_head_kv_;
  std::vector<std::vector<float>> hh_;
};

class LococoPolicy : public KvPolicy {
 public:
  struct Options {
    int32_t slots = 128;                           // M, >= 2
    int32_t chunk = 16;                            // B, >= 1
    std::string weights_path;                      // for spec() only
    std::shared_ptr<const LococoWeights> weights;  // null: λ = 0
    std::optional<float> lambda;                   // overrides every layer's λ
  };
  explicit LococoPolicy(Options options);

  std::string spec() const override;
  std::unique_ptr<PolicyState> NewState(const KvGeometry& geometry) const override;
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                       int64_t n_tokens) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;
  // Frees the pages a compression emptied.
  absl::Status EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  // Format (little-endian): "LCCS", version 1, n_layer, n_head_kv, slots, chunk, then per
  // (layer, head): n, n scores (f32 bits).
  absl::Status SaveState(const SequenceKv& seq, std::string& out) const override;
  absl::Status LoadState(std::string_view in, SequenceKv& seq) const override;
  bool reads_whole_query_group() const override { return true; }

 protected:
  std::optional<StateLayout> state_layout() const override;

 public:
  int32_t slots() const { return slots_; }
  int32_t chunk() const { return chunk_; }
  int32_t fused_slots() const { return m_c_; }
  int32_t kept_slots() const { return slots_ - m_c_; }
  // λ of a layer (0 without weights).
  float lambda(int32_t layer) const;
  // Slots a table holds after `tokens` tokens: min(floor(tokens / B) * B, M) + tokens mod B.
  int64_t SlotsAfter(int64_t tokens) const;

  // The compression step of one (layer, KV head): n > M slots of keys and values ([n, head_dim]
  // each, row-major) with their scores hh [n] become M slots, written to out_keys/out_values
  // ([M, head_dim]). Single-threaded; uses thread-local scratch.
  void Compress(int32_t layer, int32_t head_dim, int32_t n, const float* keys, const float* values,
                const float* hh, float* out_keys, float* out_values) const;

 private:
  int32_t slots_;
  int32_t chunk_;
  int32_t m_c_;
  std::string weights_path_;
  std::shared_ptr<const LococoWeights> weights_;
  std::optional<float> lambda_;
};

}  // namespace kvasir::kvcache
