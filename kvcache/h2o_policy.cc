// The `h2o` policy (kvcache/h2o_policy.h): greedy token-by-token eviction by accumulated
// attention, with a protected window of recent tokens.
#include "kvcache/h2o_policy.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <vector>

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
                               kernels::Backend& backend) const {
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  size_t score_floats = 0;  // the most slots each table holds in this call, summed
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
      score_floats += static_cast<size_t>(need);
    }
  }

  // The scores live in backend memory through the call, one region of `need` floats per table:
  // the kept slots' scores, then zeros for the slots the call appends. Each query's attention adds
  // its probabilities to its table's region (col_sums). The host reads a region back when it
  // evicts from that table (and writes back the two values an eviction changes) and at the end.
  BackendScratch call_scratch;
  BackendScratch& scratch = in.scratch != nullptr ? *in.scratch : call_scratch;
  auto* scores =
      static_cast<float*>(scratch.Get(backend, std::max<size_t>(score_floats, 1) * sizeof(float)));
  if (scores == nullptr) {
    return absl::ResourceExhaustedError("h2o: out of backend memory for the attention scores");
  }

  // The plan. Tokens go one at a time, so round r serves token r of every span: its key and value
  // are appended (with the refills of round r - 1's evictions, which write the previous token
  // into the evicted slots), its query attends over the table, and the host picks the victims of
  // the tables that hold budget + 1 slots. The views cover the most slots a table holds in the
  // call; `len` follows each table's length. Plan arrays reused across calls.
  struct Row {
    const SeqSpan* span = nullptr;
    H2oState::Head* head = nullptr;
    int32_t h = 0;
    int32_t len = 0;      // slots held
    size_t at = 0;        // the table's region of `scores`
    int32_t victim = -1;  // the slot this round's eviction refills, or -1
    bool stale = false;   // head->score lags the region
  };
  thread_local internal::LayerPlan tl_plan;
  thread_local std::vector<Row> tl_rows;
  thread_local std::vector<int32_t> tl_evicting;  // rows over the budget in the current round
  thread_local std::vector<float> tl_staging;
  internal::LayerPlan& plan = tl_plan;
  std::vector<Row>& rows = tl_rows;
  std::vector<int32_t>& evicting = tl_evicting;
  std::vector<float>& staging = tl_staging;
  plan.Clear();
  rows.clear();
  staging.assign(score_floats, 0.0f);
  int32_t n_rounds = 0;
  size_t at = 0;
  for (const SeqSpan& span : in.seqs) {
    n_rounds = std::max(n_rounds, span.count);
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTable& kt = span.seq->k(in.layer, h);
      HeadTable& vt = span.seq->v(in.layer, h);
      H2oState::Head& head = StateOf(*span.seq)->head(in.layer, h);
      rows.push_back({&span, &head, h, kt.length, at, -1, false});
      std::copy(head.score.begin(), head.score.end(), staging.begin() + static_cast<ptrdiff_t>(at));
      const int32_t need = std::min(kt.length + span.count, budget_ + 1);
      at += static_cast<size_t>(need);
      kt.length = vt.length = need;
      plan.k_tables.push_back(&kt);
      plan.v_tables.push_back(&vt);
    }
  }
  plan.BuildViews(cache);

  internal::RotateSpans(in, g, backend);
  if (score_floats > 0) backend.Upload(scores, staging.data(), score_floats * sizeof(float));
  const int32_t recent = recent_;
  const auto evict = [&](int64_t task, int) {
    Row& row = rows[static_cast<size_t>(evicting[static_cast<size_t>(task)])];
    H2oState::Head& head = *row.head;
    float* region = scores + row.at;
    backend.Download(head.score.data(), region, sizeof(float) * row.len);
    row.stale = false;
    const int32_t t = head.token.back();
    // Evict the lowest score among the tokens older than the `recent` newest (ties: oldest).
    int32_t victim = -1;
    for (int32_t s = 0; s < row.len; ++s) {
      if (head.token[s] > t - recent) continue;
      if (victim < 0 || head.score[s] < head.score[victim] ||
          (head.score[s] == head.score[victim] && head.token[s] < head.token[victim])) {
        victim = s;
      }
    }
    // The newest token, in the last slot, moves into the victim's slot; the last slot is free
    // again (score 0 for the next append).
    const int32_t last = row.len - 1;
    row.victim = -1;
    if (victim != last) {
      head.token[victim] = head.token[last];
      head.score[victim] = head.score[last];
      backend.Upload(region + victim, &head.score[victim], sizeof(float));
      row.victim = victim;
    }
    backend.Fill(region + last, 0, sizeof(float));
    head.token.pop_back();
    head.score.pop_back();
    --row.len;
  };
  for (int32_t r = 0; r < n_rounds; ++r) {
    plan.items.clear();
    evicting.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      Row& row = rows[i];
      const SeqSpan& span = *row.span;
      if (r >= span.count) continue;
      plan.writes.Add(cache, in, span, row.h, r, *plan.k_tables[i], *plan.v_tables[i], row.len);
      row.head->token.push_back(static_cast<int32_t>(span.seq->n_tokens() + r));
      row.head->score.push_back(0.0f);
      row.stale = true;
      ++row.len;
      kernels::AttentionItem item = internal::ItemOf(internal::RowsOf(in, span, row.h, g), r, 1,
                                                     static_cast<int32_t>(i), row.len, -1);
      item.col_sums = scores + row.at;
      plan.items.push_back(item);
      if (row.len > budget_) evicting.push_back(static_cast<int32_t>(i));
    }
    plan.writes.Run(cache, in, backend);
    backend.Attention(plan.Batch(g));
    // std::cref: the std::function refers to `evict` instead of copying it to the heap.
    backend.HostParallelFor(static_cast<int64_t>(evicting.size()), std::cref(evict));
    // The refills: the newest token's key and value written again, now into the victim's slot
    // (the same bytes as the last slot holds).
    for (int32_t i : evicting) {
      const Row& row = rows[static_cast<size_t>(i)];
      if (row.victim < 0) continue;
      plan.writes.Add(cache, in, *row.span, row.h, r, *plan.k_tables[i], *plan.v_tables[i],
                      row.victim);
    }
  }
  plan.writes.Run(cache, in, backend);
  for (size_t i = 0; i < rows.size(); ++i) {
    Row& row = rows[i];
    if (row.stale) {
      backend.Download(row.head->score.data(), scores + row.at, sizeof(float) * row.len);
    }
    row.span->seq->k(in.layer, row.h).length = row.len;
    row.span->seq->v(in.layer, row.h).length = row.len;
  }
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
