// The per-sequence state of the `dmc` policy and its one-token update, shared by the decode path,
// the serial and the parallel prefill paths (kvcache/dmc_policy.cc). Per (layer, KV head): the
// weighted sums of the tail slot's window, the ring of the window's weighted tokens, the
// run length, the window pointer and the free mode's threshold. Private to kvcache/dmc_*.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/dmc_policy.h"
#include "kvcache/kv_cache.h"

namespace kvasir::kvcache::dmc {

// Scalars of one (layer, KV head).
struct HeadScalars {
  int32_t run_len = 0;     // tokens of the tail slot's run; 0 before the first token
  int32_t win_ptr = 0;     // ring entry the next token writes (and, on overflow, subtracts)
  int64_t tokens = 0;      // tokens this head has seen
  float w_sum = 0.0f;      // Σ ω over the window
  double threshold = 0.0;  // free mode: cosine threshold of the next decision
  int64_t decisions = 0;   // free mode: decisions made by the threshold
  int64_t appends = 0;     // free mode: how many of them appended
};

class State : public PolicyState {
 public:
  // `heads` = n_layer * n_head_kv, indexed layer * n_head_kv + kv_head.
  State(int32_t heads, int32_t head_dim, int32_t window, double threshold);

  int32_t head_dim() const { return head_dim_; }
  int32_t window() const { return window_; }
  int32_t num_heads() const { return static_cast<int32_t>(scalars_.size()); }
  HeadScalars& scalars(int32_t head) { return scalars_[head]; }
  const HeadScalars& scalars(int32_t head) const { return scalars_[head]; }
  // [head_dim] Σ ω k and Σ ω v over the window (k pre-RoPE, or rotated with space=post; its
  // element D-1 is 0 in learned mode).
  float* k_sum(int32_t head) { return block(head); }
  float* v_sum(int32_t head) { return block(head) + head_dim_; }
  // [window, head_dim] ω k and ω v of the last `window` tokens; [window] their ω.
  float* ring_k(int32_t head) { return block(head) + 2 * head_dim_; }
  float* ring_v(int32_t head) { return ring_k(head) + static_cast<int64_t>(window_) * head_dim_; }
  float* ring_w(int32_t head) { return ring_v(head) + static_cast<int64_t>(window_) * head_dim_; }
  const float* block(int32_t head) const { return data_.data() + head * stride_; }
  float* block(int32_t head) { return data_.data() + head * stride_; }
  int64_t floats_per_head() const { return stride_; }

  // Serialized form (little-endian; see docs/compression.md). `mode` is written so that a
  // learned state is never loaded as a free one.
  // `slots[head]` is the head's slot count (its K and V table length), written for checking.
  std::string Serialize(DmcMode mode, const KvGeometry& geometry,
                        const std::vector<int32_t>& slots) const;
  // Replaces this state by `in` and returns the slot counts it was saved with. InvalidArgument
  // (one line, naming the problem) for bytes of another version, mode, window or geometry, a
  // wrong size, or values out of range; the state is unchanged then.
  absl::StatusOr<std::vector<int32_t>> Deserialize(std::string_view in, DmcMode mode,
                                                   const KvGeometry& geometry);
  // The serialized form's header size, where its int32 n_head_kv sits, and the bytes of one
  // head's record (its scalars and floats).
  static size_t SerializedHeaderBytes();
  static size_t SerializedHeadsAt();
  static size_t SerializedHeadBytes(int32_t head_dim, int32_t window);

 private:
  int32_t head_dim_;
  int32_t window_;
  int64_t stride_;
  std::vector<HeadScalars> scalars_;
  std::vector<float> data_;  // [heads, stride_]
};

// The constants of one layer call, read by Step.
struct StepParams {
  DmcMode mode = DmcMode::kFree;
  int32_t head_dim = 0;
  int32_t group = 1;         // query heads of the KV head
  int32_t window = 0;        // 0: unbounded
  int32_t sink = 0;          // a token merges only into a tail slot at index >= sink
  bool never_merge = false;  // free mode with ratio 1
  double inv_ratio = 0.25;   // free mode: target append rate
  double gain = 0.0;         // free mode: threshold step
};

// One token of one head, exactly as the released code's update kernel, in f32:
//   α = [k[D-1] - 5 > 0] (learned) or [cos(k, k_sum) >= threshold] (free); α = 0 while the head
//   has <= sink slots (and always for its first token);
//   ω = σ(mean over the group of q[D-1] + 5) + 2^-7 (learned) or 1 (free);
//   run_len = α·run_len + 1; overflow = window > 0 and run_len > window;
//   sums = α·sums - overflow·ring[win_ptr] + ω·(k, v, 1); ring[win_ptr] = ω·(k, v, 1);
//   win_ptr = (win_ptr + 1) mod window.
// `q` holds the group's query heads (q_head_stride floats apart), pre-RoPE; `slots` is the head's
// slot count before the token. Writes the tail slot's new pre-RoPE key and value,
// k_sum / w_sum and v_sum / w_sum, to k_mean and v_mean and returns α (true: merged into the
// tail, which is rewritten; false: a new slot).
bool Step(const StepParams& p, State& state, int32_t head, const float* q, int64_t q_head_stride,
          const float* k, const float* v, int32_t slots, float* k_mean, float* v_mean);

}  // namespace kvasir::kvcache::dmc
