// The `h2o` policy (kvcache/h2o_policy.h): greedy token-by-token eviction by accumulated
// attention, with a protected window of recent tokens.
#include "kvcache/h2o_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/eviction_common.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {
namespace {

constexpr uint32_t kH2oMagic = 0x53324f48;  // "H2OS" little-endian
constexpr uint32_t kH2oVersion = 1;

H2oState* StateOf(SequenceKv& seq) { return dynamic_cast<H2oState*>(seq.state()); }
const H2oState* StateOf(const SequenceKv& seq) {
  return dynamic_cast<const H2oState*>(seq.state());
}

internal::StateHeader HeaderOf(const H2oState& state, int32_t budget, int32_t recent) {
  return {.policy = "h2o",
          .article = "an",
          .magic = kH2oMagic,
          .version = kH2oVersion,
          .n_layer = state.n_layer(),
          .n_head_kv = state.n_head_kv(),
          .param_names = {"budget", "recent"},
          .params = {budget, recent}};
}

}  // namespace

std::string H2oPolicy::spec() const {
  return absl::StrCat("h2o:budget=", budget_, ",recent=", recent_);
}

std::unique_ptr<PolicyState> H2oPolicy::NewState(const KvGeometry& geometry) const {
  auto state = std::make_unique<H2oState>(geometry.n_layer, geometry.n_head_kv);
  for (int32_t l = 0; l < geometry.n_layer; ++l) {
    for (int32_t h = 0; h < geometry.n_head_kv; ++h) {
      H2oState::Head& head = state->head(l, h);
      head.token.reserve(static_cast<size_t>(budget_) + 1);
      head.score.reserve(static_cast<size_t>(budget_) + 1);
    }
  }
  return state;
}

absl::Status H2oPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  return internal::ReserveEveryTable(cache, seq, [&](const HeadTable& t) {
    const int64_t end = int64_t{t.length} + n_new;
    const int32_t slots = static_cast<int32_t>(std::min<int64_t>(end, int64_t{budget_} + 1));
    // An eviction refills the evicted slot, which may be any slot.
    const int32_t first_write = end > budget_ ? 0 : t.length;
    return std::pair<int32_t, int32_t>(slots, first_write);
  });
}

absl::Status H2oPolicy::Attend(KvCache& cache, const LayerInputs& in,
                               kernels::cpu::CpuContext& ctx) const {
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  for (const SeqSpan& span : in.seqs) {
    const H2oState* state = StateOf(*span.seq);
    if (state == nullptr || state->n_layer() != g.n_layer || state->n_head_kv() != n_kv) {
      return absl::FailedPreconditionError("h2o: the sequence has no h2o state");
    }
    for (int32_t h = 0; h < n_kv; ++h) {
      const HeadTable& kt = span.seq->k(in.layer, h);
      const HeadTable& vt = span.seq->v(in.layer, h);
      const H2oState::Head& head = state->head(in.layer, h);
      if (kt.length != vt.length || kt.length > budget_ ||
          static_cast<size_t>(kt.length) != head.token.size() ||
          head.token.size() != head.score.size()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "h2o: layer ", in.layer, " head ", h, " tables hold ", kt.length, "/", vt.length,
            " slots and the state ", head.token.size(), " (budget ", budget_, ")"));
      }
      const int64_t need = std::min<int64_t>(int64_t{kt.length} + span.count, budget_ + 1);
      KVASIR_RETURN_IF_ERROR(internal::CheckReserved(cache, kt, vt, need));
    }
  }

  internal::ForEachHeadTask(
      in, n_kv, ctx, [&](const SeqSpan& span, int32_t h, HeadTable& kt, HeadTable& vt) {
        H2oState::Head& head = StateOf(*span.seq)->head(in.layer, h);
        const internal::HeadRows rows = internal::RowsOf(in, span, h, g);
        internal::RotateRows(rows, g);
        const internal::TableAttention attention(cache, kt, vt);
        const int64_t t0 = span.seq->n_tokens();
        int32_t len = kt.length;
        for (int32_t i = 0; i < span.count; ++i) {
          const int32_t t = static_cast<int32_t>(t0 + i);
          cache.WriteSlot(kt, len, rows.k + i * rows.k_stride);
          cache.WriteSlot(vt, len, rows.v + i * rows.v_stride);
          head.token.push_back(t);
          head.score.push_back(0.0f);
          ++len;
          // The group's probabilities of this query are added straight into the scores.
          attention.Run(rows, i, 1, len, nullptr, head.score.data());
          if (len <= budget_) continue;
          // Evict the lowest score among the tokens older than the `recent` newest (ties: oldest).
          int32_t victim = -1;
          for (int32_t s = 0; s < len; ++s) {
            if (head.token[s] > t - recent_) continue;
            if (victim < 0 || head.score[s] < head.score[victim] ||
                (head.score[s] == head.score[victim] && head.token[s] < head.token[victim])) {
              victim = s;
            }
          }
          const int32_t last = len - 1;
          if (victim != last) {
            internal::CopySlot(cache, kt, last, victim);
            internal::CopySlot(cache, vt, last, victim);
            head.token[victim] = head.token[last];
            head.score[victim] = head.score[last];
          }
          head.token.pop_back();
          head.score.pop_back();
          --len;
        }
        kt.length = vt.length = len;
      });
  return absl::OkStatus();
}

absl::Status H2oPolicy::EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  internal::TruncateEveryTable(cache, seq);
  return absl::OkStatus();
}

absl::Status H2oPolicy::SaveState(const SequenceKv& seq, std::string& out) const {
  const H2oState* state = StateOf(seq);
  if (state == nullptr) return absl::FailedPreconditionError("h2o: the sequence has no h2o state");
  internal::StateWriter w(out);
  internal::WriteStateHeader(w, HeaderOf(*state, budget_, recent_));
  for (int32_t l = 0; l < state->n_layer(); ++l) {
    for (int32_t h = 0; h < state->n_head_kv(); ++h) {
      const H2oState::Head& head = state->head(l, h);
      w.I32(static_cast<int32_t>(head.token.size()));
      w.I32s(head.token);
      w.F32s(head.score);
    }
  }
  return absl::OkStatus();
}

std::optional<KvPolicy::StateLayout> H2oPolicy::state_layout() const {
  // The header, then per (layer, head) a slot count, then its token indices and scores.
  return StateLayout{
      .header_bytes = internal::kStateHeaderBytes,
      .n_head_kv_at = internal::kStateHeaderHeadsAt,
      .record_bytes = [](std::string_view rest) { return internal::CountedRecordBytes(rest, 8); }};
}

absl::Status H2oPolicy::LoadState(std::string_view in, SequenceKv& seq) const {
  H2oState* state = StateOf(seq);
  if (state == nullptr) return absl::FailedPreconditionError("h2o: the sequence has no h2o state");
  internal::StateReader r(in);
  KVASIR_RETURN_IF_ERROR(internal::ReadStateHeader(r, HeaderOf(*state, budget_, recent_), spec()));
  const int32_t n_layer = state->n_layer(), n_kv = state->n_head_kv();
  std::vector<H2oState::Head> heads(static_cast<size_t>(n_layer) * n_kv);
  for (H2oState::Head& head : heads) {
    int32_t n = 0;
    if (!r.I32(n) || n < 0 || n > budget_) {
      return absl::InvalidArgumentError("h2o state: bad slot count");
    }
    head.token.resize(n);
    head.score.resize(n);
    if (!r.I32s(head.token) || !r.F32s(head.score)) {
      return absl::InvalidArgumentError("h2o state: truncated");
    }
    for (int32_t s = 0; s < n; ++s) {
      if (head.token[s] < 0 || !std::isfinite(head.score[s])) {
        return absl::InvalidArgumentError("h2o state: bad token index or score");
      }
    }
  }
  if (r.remaining() != 0) return absl::InvalidArgumentError("h2o state: trailing bytes");
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int32_t h = 0; h < n_kv; ++h) {
      H2oState::Head& dst = state->head(l, h);
      H2oState::Head& src = heads[static_cast<size_t>(l) * n_kv + h];
      dst.token.assign(src.token.begin(), src.token.end());
      dst.score.assign(src.score.begin(), src.score.end());
    }
  }
  return absl::OkStatus();
}

PolicyResult MakeH2oPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  KVASIR_ASSIGN_OR_RETURN(int32_t budget, args.Int("budget", 256, 1, 1 << 24));
  KVASIR_ASSIGN_OR_RETURN(int32_t recent, args.Int("recent", 32, 0, 1 << 24));
  KVASIR_RETURN_IF_ERROR(args.Finish());
  if (recent > budget) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy 'h2o': recent (", recent,
                                                   ") must not exceed budget (", budget, ")"));
  }
  return std::make_shared<H2oPolicy>(budget, recent);
}

int64_t H2oPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                                int64_t n_tokens) const {
  return UniformTablePages(geometry, page_size, std::min<int64_t>(n_tokens, int64_t{budget_} + 1));
}

}  // namespace kvasir::kvcache
