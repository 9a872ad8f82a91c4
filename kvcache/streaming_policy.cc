// The `streaming` policy (kvcache/streaming_policy.h): sinks plus a sliding window per
// (layer, KV head), with the window kept in a ring of slots.
#include "kvcache/streaming_policy.h"

#include <algorithm>

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
                                     kernels::Backend& backend) const {
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

  // The plan. Per span, round 0 appends the tokens before the ring wraps (in order, attending
  // over the causal prefix in one item: exactly what `full` does), and each later round writes one
  // token into its ring slot and attends over every slot (the slot it reuses was still needed by
  // the token before). A round's slot writes run before its attention; the spans' rounds run
  // together. Plan arrays reused across calls.
  thread_local internal::LayerPlan tl_plan;
  internal::LayerPlan& plan = tl_plan;
  plan.Clear();
  int32_t rounds = 0;
  for (const SeqSpan& span : in.seqs) {
    const int64_t t0 = span.seq->n_tokens();
    const int32_t n_linear = static_cast<int32_t>(std::clamp<int64_t>(cap - t0, 0, span.count));
    rounds = std::max(rounds, (n_linear > 0 ? 1 : 0) + span.count - n_linear);
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTable& kt = span.seq->k(in.layer, h);
      HeadTable& vt = span.seq->v(in.layer, h);
      kt.length = vt.length = static_cast<int32_t>(std::min<int64_t>(t0 + span.count, cap));
      plan.k_tables.push_back(&kt);
      plan.v_tables.push_back(&vt);
    }
  }
  plan.BuildViews(cache);

  internal::RotateSpans(in, g, backend);
  for (int32_t r = 0; r < rounds; ++r) {
    plan.items.clear();
    for (size_t s = 0; s < in.seqs.size(); ++s) {
      const SeqSpan& span = in.seqs[s];
      const int64_t t0 = span.seq->n_tokens();
      const int32_t n_linear = static_cast<int32_t>(std::clamp<int64_t>(cap - t0, 0, span.count));
      // The span's token of this round when it is a ring token.
      const int32_t i = n_linear + r - (n_linear > 0 ? 1 : 0);
      const bool linear = n_linear > 0 && r == 0;
      if (!linear && i >= span.count) continue;
      for (int32_t h = 0; h < n_kv; ++h) {
        const int32_t row = static_cast<int32_t>(s) * n_kv + h;
        const HeadTable& kt = *plan.k_tables[row];
        const HeadTable& vt = *plan.v_tables[row];
        const internal::HeadRows rows = internal::RowsOf(in, span, h, g);
        if (linear) {
          const int32_t base = static_cast<int32_t>(t0);
          for (int32_t j = 0; j < n_linear; ++j) {
            plan.writes.Add(cache, in, span, h, j, kt, vt, base + j);
          }
          plan.items.push_back(internal::ItemOf(rows, 0, n_linear, row, base + n_linear, base));
        } else {
          plan.writes.Add(cache, in, span, h, i, kt, vt, SlotOf(t0 + i));
          plan.items.push_back(internal::ItemOf(rows, i, 1, row, static_cast<int32_t>(cap), -1));
        }
      }
    }
    plan.writes.Run(cache, in, backend);
    backend.Attention(plan.Batch(g));
  }
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
