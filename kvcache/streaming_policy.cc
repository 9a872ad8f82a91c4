// The `streaming` policy (kvcache/streaming_policy.h): sinks plus a sliding window per
// (layer, KV head), with the window kept in a ring of slots.
#include "kvcache/streaming_policy.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/eviction_common.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {

std::string StreamingPolicy::spec() const {
  return absl::StrCat("streaming:sink=", sink_, ",window=", window_);
}

int32_t StreamingPolicy::SlotOf(int64_t t) const {
  if (t < sink_) return static_cast<int32_t>(t);
  return sink_ + static_cast<int32_t>((t - sink_) % window_);
}

absl::Status StreamingPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  const int64_t cap = capacity();
  const int64_t end = seq.n_tokens() + n_new;
  return internal::ReserveEveryTable(cache, seq, [&](const HeadTable& t) {
    const int32_t slots = static_cast<int32_t>(std::min<int64_t>(t.length + int64_t{n_new}, cap));
    // Once the ring wraps, any window slot may be overwritten.
    const int32_t first_write = end > cap ? std::min(t.length, sink_) : t.length;
    return std::pair<int32_t, int32_t>(slots, first_write);
  });
}

absl::Status StreamingPolicy::Attend(KvCache& cache, const LayerInputs& in,
                                     kernels::cpu::CpuContext& ctx) const {
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  const int64_t cap = capacity();
  for (const SeqSpan& span : in.seqs) {
    const int64_t t0 = span.seq->n_tokens();
    const int32_t held = static_cast<int32_t>(std::min<int64_t>(t0, cap));
    const int32_t need = static_cast<int32_t>(std::min<int64_t>(t0 + span.count, cap));
    for (int32_t h = 0; h < n_kv; ++h) {
      const HeadTable& kt = span.seq->k(in.layer, h);
      const HeadTable& vt = span.seq->v(in.layer, h);
      if (kt.length != held || vt.length != held) {
        return absl::FailedPreconditionError(
            absl::StrCat("streaming: layer ", in.layer, " head ", h, " holds ", kt.length, "/",
                         vt.length, " slots, expected ", held, " after ", t0, " tokens"));
      }
      KVASIR_RETURN_IF_ERROR(internal::CheckReserved(cache, kt, vt, need));
    }
  }

  internal::ForEachHeadTask(
      in, n_kv, ctx, [&](const SeqSpan& span, int32_t h, HeadTable& kt, HeadTable& vt) {
        const internal::HeadRows rows = internal::RowsOf(in, span, h, g);
        internal::RotateRows(rows, g);
        const internal::TableAttention attention(cache, kt, vt);
        const int64_t t0 = span.seq->n_tokens();

        // Tokens before the ring wraps: appended in order, causal prefix (exactly what `full`
        // does).
        const int32_t n_linear = static_cast<int32_t>(std::clamp<int64_t>(cap - t0, 0, span.count));
        if (n_linear > 0) {
          const int32_t base = static_cast<int32_t>(t0);
          thread_local std::vector<int32_t> visible;
          visible.resize(n_linear);
          for (int32_t i = 0; i < n_linear; ++i) {
            cache.WriteSlot(kt, base + i, rows.k + i * rows.k_stride);
            cache.WriteSlot(vt, base + i, rows.v + i * rows.v_stride);
            visible[i] = base + i + 1;
          }
          kt.length = vt.length = base + n_linear;
          attention.Run(rows, 0, n_linear, base + n_linear, visible.data(), nullptr);
        }
        // Then one token at a time: it replaces the token leaving the window and sees every slot.
        for (int32_t i = n_linear; i < span.count; ++i) {
          const int32_t slot = SlotOf(t0 + i);
          cache.WriteSlot(kt, slot, rows.k + i * rows.k_stride);
          cache.WriteSlot(vt, slot, rows.v + i * rows.v_stride);
          kt.length = vt.length = static_cast<int32_t>(cap);
          attention.Run(rows, i, 1, static_cast<int32_t>(cap), nullptr, nullptr);
        }
      });
  return absl::OkStatus();
}

PolicyResult MakeStreamingPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  KVASIR_ASSIGN_OR_RETURN(int32_t sink, args.Int("sink", 4, 0, 1 << 24));
  KVASIR_ASSIGN_OR_RETURN(int32_t window, args.Int("window", 252, 1, 1 << 24));
  KVASIR_RETURN_IF_ERROR(args.Finish());
  return std::make_shared<StreamingPolicy>(sink, window);
}

int64_t StreamingPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                                      int64_t n_tokens) const {
  return UniformTablePages(geometry, page_size, std::min<int64_t>(n_tokens, capacity()));
}

}  // namespace kvasir::kvcache
