// `streaming:sink=S,window=W` (StreamingLLM, arXiv 2309.17453): every (layer, KV head) keeps the
// K and V of the first S tokens (attention sinks) and of the W newest tokens. Keys are stored
// after RoPE at their original positions (the paper's baseline without re-rotation). Layout of a
// table: linear while the sequence has at most S + W tokens; then slots [0, S) hold the sinks and
// slots [S, S + W) a ring where token t >= S lives at slot S + (t - S) % W, so a new token
// overwrites exactly the token that leaves the window. Needs no state beyond the tables.
#pragma once

#include <cstdint>
#include <string>

#include "kvcache/policy.h"

namespace kvasir::kvcache {

class StreamingPolicy : public KvPolicy {
 public:
  // sink >= 0, window >= 1 (MakeStreamingPolicy validates spec strings).
  StreamingPolicy(int32_t sink, int32_t window) : sink_(sink), window_(window) {}

  std::string spec() const override;
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                       int64_t n_tokens) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;

  int32_t sink() const { return sink_; }
  int32_t window() const { return window_; }
  // Slots per table once the sequence is longer than sink + window.
  int32_t capacity() const { return sink_ + window_; }
  // The slot that holds token `t` (0-based index in the sequence) while it is kept.
  int32_t SlotOf(int64_t t) const;

 private:
  int32_t sink_;
  int32_t window_;
};

}  // namespace kvasir::kvcache
