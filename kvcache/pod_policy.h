// `pod`: Proximal tokens over Distant tokens (arXiv 2412.02252). Proximal tokens (the first `sink`
// and the `window` newest relative to each query, itself included) keep K and V in every layer;
// distant tokens use the keys of the anchor layer of the (layer, KV head)'s group (kvcache/
// pod_groups.h) and each layer's own values. Tables: V of every layer and K of anchor layers hold
// every token in token order; K of a non-anchor (layer, head) is `sink` slots plus a ring of
// `window` slots, so it never holds more than sink + window slots. docs/compression.md.
//
//   KVASIR_ASSIGN_OR_RETURN(auto policy, ParsePolicy("pod:sink=4,window=252,group_size=2", g));
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvcache/pod_groups.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

class PodPolicy : public KvPolicy {
 public:
  // sink >= 0, window >= 1; `groups` must match the geometry the policy is used with.
  // `groups_spec` is the spec's grouping part ("groups=FILE" or "group_size=2") for spec().
  // `adapter`: the LoRA file of a model post-trained for this policy (weights=FILE; "" none).
  PodPolicy(int32_t sink, int32_t window, PodGroups groups, std::string groups_spec,
            std::string adapter = "");

  std::string spec() const override;
  // The post-trained model's adapter (train/retrofit.py pod); the engine merges it.
  std::string model_adapter() const override { return adapter_; }
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                       int64_t n_tokens) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;
  // The state is only the metadata that gives the tables their meaning (sink, window, groups):
  // where a token's key sits in a ring follows from its position. LoadState refuses bytes of a
  // different version, sink, window or grouping, and tables whose lengths do not fit.
  absl::Status SaveState(const SequenceKv& seq, std::string& out) const override;
  absl::Status LoadState(std::string_view in, SequenceKv& seq) const override;

 protected:
  std::optional<StateLayout> state_layout() const override;

 public:
  int32_t sink() const { return sink_; }
  int32_t window() const { return window_; }
  const PodGroups& groups() const { return groups_; }

  // Whether key position j is proximal for the query at position i (j <= i): j < sink or
  // j > i - window. The rest, sink <= j <= i - window, is distant.
  static bool IsProximal(int64_t i, int64_t j, int32_t sink, int32_t window) {
    return j < sink || j > i - window;
  }
  // K + V slots a sequence of `tokens` tokens holds: V and anchor K hold `tokens` each, the other
  // K tables min(tokens, sink + window) each.
  int64_t HeldSlots(int64_t tokens) const;

 private:
  int64_t ring_capacity() const { return int64_t{sink_} + window_; }
  // The K slot of token j in a non-anchor table (j < sink: j; else sink + (j - sink) % window).
  int32_t RingSlot(int64_t j) const;
  // The lowest slot of a non-anchor K table that tokens t..t+n-1 write.
  int32_t FirstKWrite(int64_t t, int64_t n) const;

  int32_t sink_;
  int32_t window_;
  PodGroups groups_;
  std::string groups_spec_;
  std::string adapter_;
};

}  // namespace kvasir::kvcache
