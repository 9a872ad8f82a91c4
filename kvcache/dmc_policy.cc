#include "kvcache/dmc_policy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/half.h"
#include "common/status_macros.h"
#include "kvcache/dmc_state.h"
#include "kvcache/eviction_common.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {
namespace {

// Free mode's default number of protected first slots (docs/compression.md).
constexpr int32_t kFreeDefaultSink = 4;
// Free mode's default recent window (docs/compression.md).
constexpr int32_t kFreeDefaultRecent = 64;

// A one-row CSR view over every reserved page of a table (slots past its length included), so
// that the table can grow inside a layer call without rebuilding the view.
struct RowView {
  int32_t indptr[2] = {0, 0};
  int32_t last_page_len = 0;
  kernels::PagedKvView view;
};

void MakeRowView(const KvCache& cache, const HeadTable& table, RowView& rv) {
  rv.indptr[1] = static_cast<int32_t>(table.pages.size());
  rv.last_page_len = cache.pool().page_size();
  rv.view.num_rows = 1;
  rv.view.indptr = rv.indptr;
  rv.view.indices = table.pages.data();
  rv.view.last_page_len = &rv.last_page_len;
  rv.view.page_size = cache.pool().page_size();
  rv.view.head_dim = cache.pool().head_dim();
  rv.view.dtype = cache.pool().dtype();
  rv.view.pool = cache.pool().base();
}

int32_t Capacity(const KvCache& cache, const HeadTable& table) {
  return static_cast<int32_t>(table.pages.size()) * cache.pool().page_size();
}

dmc::State* StateOf(SequenceKv& seq) { return static_cast<dmc::State*>(seq.state()); }
const dmc::State* StateOf(const SequenceKv& seq) {
  return static_cast<const dmc::State*>(seq.state());
}

// Everything one (sequence span, KV head) task of a layer call reads.
struct HeadTask {
  kernels::Backend* backend = nullptr;
  KvCache* cache = nullptr;
  const KvGeometry* g = nullptr;
  dmc::StepParams params;
  dmc::State* state = nullptr;
  int32_t head = 0;        // layer * n_head_kv + kv_head
  bool post_rope = false;  // merge rotated keys (free mode, space=post)
  int32_t sink = 0;        // recent > 0: slots [0, sink) hold the first tokens
  int32_t recent = 0;      // recent > 0: slots [sink, sink + recent) are the ring of recent tokens
  HeadTable* kt = nullptr;
  HeadTable* vt = nullptr;
  int32_t count = 0;
  float* q = nullptr;  // first token's query group
  int64_t q_stride = 0;
  const float* k = nullptr;
  int64_t k_stride = 0;
  const float* v = nullptr;
  int64_t v_stride = 0;
  const int32_t* pos = nullptr;
  float* out = nullptr;
  int64_t out_stride = 0;
};

// Rotates `rows` keys (one head each, D floats apart) at their positions; in learned mode the
// decision element is zeroed again afterwards, as the released rotary kernel does.
void RotateKeys(const HeadTask& t, float* keys, int32_t rows, const int32_t* pos) {
  const KvGeometry& g = *t.g;
  const int32_t d = g.head_dim;
  t.backend->Rope(keys, rows, d, 1, d, g.n_rot, pos, g.rope_base, g.rope_layout);
  if (t.params.mode == DmcMode::kLearned) {
    for (int32_t i = 0; i < rows; ++i) keys[static_cast<int64_t>(i) * d + d - 1] = 0.0f;
  }
}

// Rotates the queries of tokens [first, first + rows) in place: q[D-1] = 0 before and after the
// rotation in learned mode.
void RotateQueries(const HeadTask& t, int32_t first, int32_t rows) {
  const KvGeometry& g = *t.g;
  const int32_t d = g.head_dim;
  const int32_t group = t.params.group;
  float* q = t.q + first * t.q_stride;
  auto zero_last = [&] {
    for (int32_t i = 0; i < rows; ++i) {
      for (int32_t h = 0; h < group; ++h) q[i * t.q_stride + h * d + d - 1] = 0.0f;
    }
  };
  if (t.params.mode == DmcMode::kLearned) zero_last();
  t.backend->Rope(q, rows, t.q_stride, group, d, g.n_rot, t.pos + first, g.rope_base,
                  g.rope_layout);
  if (t.params.mode == DmcMode::kLearned) zero_last();
}

float Scale(const HeadTask& t) { return 1.0f / std::sqrt(static_cast<float>(t.g->head_dim)); }

// Query i of the task over keys [0, n_keys) of its tables (all visible).
kernels::AttentionItem QueryItem(const HeadTask& t, int32_t i, int32_t n_keys) {
  kernels::AttentionItem item;
  item.q = t.q + i * t.q_stride;
  item.q_token_stride = t.q_stride;
  item.n_q = 1;
  item.n_keys = n_keys;
  item.out = t.out + i * t.out_stride;
  item.out_token_stride = t.out_stride;
  return item;
}

// One backend Attention call of `items` over the task's one-row K and V views.
void RunAttention(const HeadTask& t, const RowView& kv, const RowView& vv,
                  std::span<const kernels::AttentionItem> items) {
  kernels::AttentionBatch b;
  b.k = kv.view;
  b.v = vv.view;
  b.group = t.params.group;
  b.head_dim = t.g->head_dim;
  b.scale = Scale(t);
  b.items = items;
  t.backend->Attention(b);
}

// Token by token, as the released code: update, write the tail slot, attend over all slots.
void RunSerial(const HeadTask& t) {
  const int32_t d = t.g->head_dim;
  KvCache& cache = *t.cache;
  thread_local std::vector<float> tl_kv;
  tl_kv.resize(3 * static_cast<size_t>(d));
  float* k_mean = tl_kv.data();
  float* v_mean = k_mean + d;
  float* k_rot = v_mean + d;
  RowView kv, vv;
  MakeRowView(cache, *t.kt, kv);
  MakeRowView(cache, *t.vt, vv);
  for (int32_t i = 0; i < t.count; ++i) {
    const int32_t slots = t.kt->length;
    const float* k = t.k + i * t.k_stride;
    if (t.post_rope) {
      std::copy(k, k + d, k_rot);
      RotateKeys(t, k_rot, 1, t.pos + i);
      k = k_rot;
    }
    const bool merged = dmc::Step(t.params, *t.state, t.head, t.q + i * t.q_stride, d, k,
                                  t.v + i * t.v_stride, slots, k_mean, v_mean);
    const int32_t slot = merged ? slots - 1 : slots;
    if (!t.post_rope) RotateKeys(t, k_mean, 1, t.pos + i);
    cache.WriteSlot(*t.kt, slot, k_mean);
    cache.WriteSlot(*t.vt, slot, v_mean);
    t.kt->length = t.vt->length = slot + 1;
    ++t.state->scalars(t.head).tokens;
    RotateQueries(t, i, 1);
    const kernels::AttentionItem item = QueryItem(t, i, slot + 1);
    RunAttention(t, kv, vv, {&item, 1});
  }
}

// The whole chunk at once: the scan gives every token's partial accumulation K̃_i, Ṽ_i and its
// slot s_i; the slots of run ends are final and written; query i attends to slots [0, s_i) (all
// closed before its run) and to its own K̃_i, merged through the log-sum-exp. This is the
// sequential result: when token i is processed, the cache holds exactly those closed slots and
// its tail slot holds K̃_i.
void RunParallel(const HeadTask& t) {
  const int32_t d = t.g->head_dim;
  const int32_t n = t.count;
  const int32_t group = t.params.group;
  KvCache& cache = *t.cache;
  thread_local std::vector<float> tl_rows, tl_lse, tl_self;
  thread_local std::vector<int32_t> tl_slot;
  thread_local std::vector<uint8_t> tl_merged;
  tl_rows.resize((t.post_rope ? 3 : 2) * static_cast<size_t>(n) * d);
  tl_lse.resize(2 * static_cast<size_t>(n) * group);
  tl_self.resize(static_cast<size_t>(group) * d);
  tl_slot.resize(n);
  tl_merged.resize(n + 1);
  float* k_rows = tl_rows.data();
  float* v_rows = k_rows + static_cast<int64_t>(n) * d;

  // Keys in the space they are merged in.
  const float* keys = t.k;
  int64_t key_stride = t.k_stride;
  if (t.post_rope) {
    float* rotated = v_rows + static_cast<int64_t>(n) * d;
    for (int32_t i = 0; i < n; ++i) {
      std::copy(t.k + i * t.k_stride, t.k + i * t.k_stride + d,
                rotated + static_cast<int64_t>(i) * d);
    }
    RotateKeys(t, rotated, n, t.pos);
    keys = rotated;
    key_stride = d;
  }

  // The scan.
  int32_t slots = t.kt->length;
  for (int32_t i = 0; i < n; ++i) {
    const bool merged =
        dmc::Step(t.params, *t.state, t.head, t.q + i * t.q_stride, d, keys + i * key_stride,
                  t.v + i * t.v_stride, slots, k_rows + static_cast<int64_t>(i) * d,
                  v_rows + static_cast<int64_t>(i) * d);
    tl_merged[i] = merged ? 1 : 0;
    tl_slot[i] = merged ? slots - 1 : slots;
    slots = tl_slot[i] + 1;
  }
  tl_merged[n] = 0;  // the last token's slot is the open tail: written too
  if (!t.post_rope) RotateKeys(t, k_rows, n, t.pos);

  // Final slots: the run ends.
  for (int32_t i = 0; i < n; ++i) {
    if (tl_merged[i + 1] != 0) continue;
    cache.WriteSlot(*t.kt, tl_slot[i], k_rows + static_cast<int64_t>(i) * d);
    cache.WriteSlot(*t.vt, tl_slot[i], v_rows + static_cast<int64_t>(i) * d);
  }
  t.kt->length = t.vt->length = slots;
  t.state->scalars(t.head).tokens += n;

  // Attention over the closed slots (query i sees slots [0, s_i): one item each), then the
  // token's own slot.
  RotateQueries(t, 0, n);
  RowView kv, vv;
  MakeRowView(cache, *t.kt, kv);
  MakeRowView(cache, *t.vt, vv);
  thread_local std::vector<kernels::AttentionItem> tl_items;
  tl_items.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    tl_items[i] = QueryItem(t, i, tl_slot[i]);
    tl_items[i].lse = tl_lse.data() + static_cast<int64_t>(i) * group;
  }
  RunAttention(t, kv, vv, tl_items);
  const float scale = Scale(t);

  const bool f16 = cache.pool().dtype() == DType::kF16;
  float* lse_self = tl_lse.data() + static_cast<int64_t>(n) * group;
  for (int32_t i = 0; i < n; ++i) {
    float* kr = k_rows + static_cast<int64_t>(i) * d;
    float* vr = v_rows + static_cast<int64_t>(i) * d;
    if (f16) {  // the serial path reads the slot back from an f16 page
      for (int32_t j = 0; j < d; ++j) {
        kr[j] = Fp16ToFp32(Fp32ToFp16(kr[j]));
        vr[j] = Fp16ToFp32(Fp32ToFp16(vr[j]));
      }
    }
    const float* q = t.q + i * t.q_stride;
    for (int32_t h = 0; h < group; ++h) {
      float dot = 0.0f;
      for (int32_t j = 0; j < d; ++j) dot += q[h * d + j] * kr[j];
      lse_self[h] = dot * scale;
      std::copy(vr, vr + d, tl_self.data() + static_cast<int64_t>(h) * d);
    }
    t.backend->MergeAttention(t.out + i * t.out_stride,
                              tl_lse.data() + static_cast<int64_t>(i) * group, tl_self.data(),
                              lse_self, group, d);
  }
}

// Free mode with a recent window: the table is [sinks | ring of the last `recent` tokens |
// merged slots]. A token first takes a ring slot; the token it displaces (rotated key and value
// read back from the ring) goes through Step into the merged part. Token by token.
void RunRecent(const HeadTask& t) {
  const int32_t d = t.g->head_dim;
  const int32_t fixed = t.sink + t.recent;
  KvCache& cache = *t.cache;
  dmc::HeadScalars& s = t.state->scalars(t.head);
  thread_local std::vector<float> tl_buf;
  tl_buf.resize(5 * static_cast<size_t>(d));
  float* k_new = tl_buf.data();
  float* k_old = k_new + d;
  float* v_old = k_old + d;
  float* k_mean = v_old + d;
  float* v_mean = k_mean + d;
  RowView kv, vv;
  MakeRowView(cache, *t.kt, kv);
  MakeRowView(cache, *t.vt, vv);
  dmc::StepParams merger = t.params;
  merger.sink = 0;  // the merged part's first slot always appends; sinks are separate slots
  for (int32_t i = 0; i < t.count; ++i) {
    const float* k = t.k + i * t.k_stride;
    const float* v = t.v + i * t.v_stride;
    std::copy(k, k + d, k_new);
    RotateKeys(t, k_new, 1, t.pos + i);
    int32_t length = t.kt->length;
    int32_t slot = length;  // where the new token goes
    if (s.tokens >= fixed) {
      slot = t.sink + static_cast<int32_t>((s.tokens - t.sink) % t.recent);
      cache.ReadSlot(*t.kt, slot, k_old);
      cache.ReadSlot(*t.vt, slot, v_old);
      const int32_t merged_slots = length - fixed;
      const bool merged = dmc::Step(merger, *t.state, t.head, t.q + i * t.q_stride, d, k_old, v_old,
                                    merged_slots, k_mean, v_mean);
      const int32_t target = fixed + (merged ? merged_slots - 1 : merged_slots);
      cache.WriteSlot(*t.kt, target, k_mean);
      cache.WriteSlot(*t.vt, target, v_mean);
      length = target + 1;
    } else {
      length = slot + 1;
    }
    cache.WriteSlot(*t.kt, slot, k_new);
    cache.WriteSlot(*t.vt, slot, v);
    t.kt->length = t.vt->length = length;
    ++s.tokens;
    RotateQueries(t, i, 1);
    const kernels::AttentionItem item = QueryItem(t, i, length);
    RunAttention(t, kv, vv, {&item, 1});
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<const DmcPolicy>> DmcPolicy::Create(const DmcOptions& o,
                                                                   const KvGeometry& g) {
  if (g.n_layer <= 0 || g.n_head_kv <= 0 || g.n_head <= 0 || g.n_head % g.n_head_kv != 0 ||
      g.head_dim < 2) {
    return absl::InvalidArgumentError(absl::StrCat("dmc: unsupported geometry (heads ", g.n_head,
                                                   ", kv heads ", g.n_head_kv, ", head dim ",
                                                   g.head_dim, ")"));
  }
  if (!(o.ratio >= 1.0 && o.ratio <= 1e6)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dmc: ratio must be in [1, 1e6], got ", o.ratio));
  }
  if (o.window < 0 || o.window > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("dmc: window must be in [0, 1024], got ", o.window));
  }
  if (o.sink < 0) return absl::InvalidArgumentError("dmc: sink must be >= 0");
  if (!(o.threshold >= -1.0 && o.threshold <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dmc: threshold must be in [-1, 1], got ", o.threshold));
  }
  if (o.post_rope && o.mode == DmcMode::kLearned) {
    return absl::InvalidArgumentError("dmc: mode=learned merges pre-RoPE keys (space=pre)");
  }
  if (o.recent < 0 || o.recent > (1 << 20) || (o.recent > 0 && o.mode == DmcMode::kLearned) ||
      (o.recent > 0 && !o.post_rope)) {
    return absl::InvalidArgumentError(
        "dmc: recent must be in [0, 2^20], and recent > 0 needs mode=free with space=post");
  }
  if (!(o.gain > 0.0 && o.gain <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("dmc: gain must be in (0, 1], got ", o.gain));
  }
  return std::shared_ptr<const DmcPolicy>(new DmcPolicy(o, g));
}

std::string DmcPolicy::spec() const {
  const DmcOptions& o = options_;
  std::string s = o.mode == DmcMode::kLearned
                      ? absl::StrCat("dmc:mode=learned,window=", o.window, ",sink=", o.sink)
                      : absl::StrCat("dmc:mode=free,ratio=", o.ratio, ",window=", o.window,
                                     ",sink=", o.sink, ",threshold=", o.threshold, ",gain=", o.gain,
                                     o.post_rope ? ",space=post" : "",
                                     // Always written: recent's default (64) is not 0.
                                     ",recent=", o.recent);
  if (o.prefill == DmcPrefill::kSerial) absl::StrAppend(&s, ",prefill=serial");
  if (!o.adapter.empty()) absl::StrAppend(&s, ",weights=", o.adapter);
  return s;
}

std::unique_ptr<PolicyState> DmcPolicy::NewState(const KvGeometry& g) const {
  return std::make_unique<dmc::State>(g.n_layer * g.n_head_kv, g.head_dim, options_.window,
                                      options_.threshold);
}

absl::Status DmcPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  return internal::ReserveEveryTable(cache, seq, [&](const HeadTable& t) {
    // Worst case every token appends; the tail slot may be rewritten, so its page must be
    // private.
    // With a recent window the ring after the sinks is rewritten too.
    const int32_t tail = std::max(0, t.length - 1);
    const int32_t first_write = options_.recent > 0 ? std::min(options_.sink, tail) : tail;
    return std::pair<int32_t, int32_t>(t.length + n_new, first_write);
  });
}

absl::Status DmcPolicy::Attend(KvCache& cache, const LayerInputs& in,
                               kernels::Backend& backend) const {
  // The merges read and rewrite the tables' slots on the host.
  if (!backend.host_addressable()) {
    return absl::FailedPreconditionError("the dmc KV policy runs on the CPU backend only for now");
  }
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  const int32_t hd = g.head_dim;
  const int32_t group = g.group();
  if (hd != geometry_.head_dim || n_kv != geometry_.n_head_kv || g.n_head != geometry_.n_head) {
    return absl::FailedPreconditionError("dmc: the cache's geometry is not the policy's");
  }
  dmc::StepParams params;
  params.mode = options_.mode;
  params.head_dim = hd;
  params.group = group;
  params.window = options_.window;
  params.sink = options_.sink;
  params.never_merge = options_.ratio <= 1.0;
  params.inv_ratio = 1.0 / options_.ratio;
  params.gain = options_.gain;

  // Serial part: check the reservations and the states, describe the tasks.
  thread_local std::vector<HeadTask> tl_tasks;
  std::vector<HeadTask>& tasks = tl_tasks;
  tasks.clear();
  for (const SeqSpan& span : in.seqs) {
    if (span.count <= 0) continue;
    dmc::State* state = StateOf(*span.seq);
    if (state == nullptr || state->num_heads() != g.n_layer * n_kv || state->head_dim() != hd ||
        state->window() != options_.window) {
      return absl::FailedPreconditionError("dmc: a sequence has no dmc state of this geometry");
    }
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTask t;
      t.backend = &backend;
      t.cache = &cache;
      t.g = &g;
      t.params = params;
      t.state = state;
      t.head = in.layer * n_kv + h;
      t.post_rope = options_.post_rope;
      t.sink = options_.sink;
      t.recent = options_.recent;
      t.kt = &span.seq->k(in.layer, h);
      t.vt = &span.seq->v(in.layer, h);
      if (t.kt->length != t.vt->length) {
        return absl::FailedPreconditionError("dmc: K and V tables of a head differ in length");
      }
      if (t.kt->length + span.count > Capacity(cache, *t.kt) ||
          t.vt->length + span.count > Capacity(cache, *t.vt)) {
        return absl::FailedPreconditionError("dmc: KV tables were not reserved before Attend");
      }
      t.count = span.count;
      t.q = in.q + span.begin * in.q_stride + static_cast<int64_t>(h) * group * hd;
      t.q_stride = in.q_stride;
      t.k = in.k + span.begin * in.k_stride + static_cast<int64_t>(h) * hd;
      t.k_stride = in.k_stride;
      t.v = in.v + span.begin * in.v_stride + static_cast<int64_t>(h) * hd;
      t.v_stride = in.v_stride;
      t.pos = in.pos + span.begin;
      t.out = in.out + span.begin * in.out_stride + static_cast<int64_t>(h) * group * hd;
      t.out_stride = in.out_stride;
      tasks.push_back(t);
    }
  }
  const bool parallel_prefill = options_.prefill == DmcPrefill::kParallel;
  auto run = [&tasks, parallel_prefill](int64_t i, int) {
    const HeadTask& t = tasks[static_cast<size_t>(i)];
    if (t.recent > 0) {
      RunRecent(t);
    } else if (parallel_prefill && t.count > 1) {
      RunParallel(t);
    } else {
      RunSerial(t);
    }
  };
  // One host task per (span, KV head); the backend operations inside run on the task's thread.
  // std::cref: the std::function refers to `run` instead of copying it to the heap.
  backend.HostParallelFor(static_cast<int64_t>(tasks.size()), std::cref(run));
  return absl::OkStatus();
}

absl::Status DmcPolicy::EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  // Give back the pages reserved for appends that turned out to be merges.
  internal::TruncateEveryTable(cache, seq);
  return absl::OkStatus();
}

absl::Status DmcPolicy::SaveState(const SequenceKv& seq, std::string& out) const {
  const dmc::State* state = StateOf(seq);
  const KvGeometry& g = geometry_;
  if (state == nullptr || state->num_heads() != g.n_layer * g.n_head_kv) {
    return absl::FailedPreconditionError("dmc: the sequence has no dmc state");
  }
  std::vector<int32_t> slots;
  slots.reserve(state->num_heads());
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      if (seq.k(l, h).length != seq.v(l, h).length) {
        return absl::FailedPreconditionError("dmc: K and V tables of a head differ in length");
      }
      slots.push_back(seq.k(l, h).length);
    }
  }
  out = state->Serialize(options_.mode, g, slots);
  return absl::OkStatus();
}

std::optional<KvPolicy::StateLayout> DmcPolicy::state_layout() const {
  const size_t head = dmc::State::SerializedHeadBytes(geometry_.head_dim, options_.window);
  return StateLayout{.header_bytes = dmc::State::SerializedHeaderBytes(),
                     .n_head_kv_at = dmc::State::SerializedHeadsAt(),
                     .record_bytes = [head](std::string_view rest) -> size_t {
                       return rest.size() >= head ? head : 0;
                     }};
}

absl::Status DmcPolicy::LoadState(std::string_view in, SequenceKv& seq) const {
  dmc::State* state = StateOf(seq);
  const KvGeometry& g = geometry_;
  if (state == nullptr) return absl::FailedPreconditionError("dmc: the sequence has no dmc state");
  dmc::State loaded(g.n_layer * g.n_head_kv, g.head_dim, options_.window, options_.threshold);
  KVASIR_ASSIGN_OR_RETURN(std::vector<int32_t> slots, loaded.Deserialize(in, options_.mode, g));
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      const int32_t want = slots[l * g.n_head_kv + h];
      if (seq.k(l, h).length != want || seq.v(l, h).length != want) {
        return absl::InvalidArgumentError(absl::StrCat(
            "dmc state: layer ", l, " head ", h, " was saved with ", want,
            " slots but its tables hold ", seq.k(l, h).length, " and ", seq.v(l, h).length));
      }
    }
  }
  *state = std::move(loaded);
  return absl::OkStatus();
}

DmcHeadStats DmcPolicy::HeadStats(const SequenceKv& seq, int32_t layer, int32_t kv_head) const {
  DmcHeadStats st;
  st.slots = seq.k(layer, kv_head).length;
  const dmc::State* state = StateOf(seq);
  if (state == nullptr) return st;
  const dmc::HeadScalars& s = state->scalars(layer * geometry_.n_head_kv + kv_head);
  st.run_len = s.run_len;
  st.tokens = s.tokens;
  st.threshold = s.threshold;
  st.decisions = s.decisions;
  st.appends = s.appends;
  return st;
}

PolicyResult MakeDmcPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  DmcOptions o;
  KVASIR_ASSIGN_OR_RETURN(std::string mode, args.String("mode", "free"));
  if (mode == "learned") {
    o.mode = DmcMode::kLearned;
    KVASIR_ASSIGN_OR_RETURN(o.adapter, args.File("weights"));
    for (const char* key : {"ratio", "threshold", "gain", "space", "recent"}) {
      if (args.Has(key)) {
        return absl::InvalidArgumentError(absl::StrCat("KV policy 'dmc': ", key,
                                                       " applies to mode=free only (mode=learned "
                                                       "takes its ratio from the checkpoint)"));
      }
    }
  } else if (mode == "free") {
    o.mode = DmcMode::kFree;
    KVASIR_ASSIGN_OR_RETURN(o.ratio, args.Float("ratio", 4.0, 1.0, 1e6));
    KVASIR_ASSIGN_OR_RETURN(o.threshold, args.Float("threshold", kDmcDefaultThreshold, -1.0, 1.0));
    KVASIR_ASSIGN_OR_RETURN(o.gain, args.Float("gain", kDmcDefaultGain, 1e-6, 1.0));
    KVASIR_ASSIGN_OR_RETURN(o.recent, args.Int("recent", kFreeDefaultRecent, 0, 1 << 20));
    KVASIR_ASSIGN_OR_RETURN(std::string space, args.String("space", o.recent > 0 ? "post" : "pre"));
    if (space != "pre" && space != "post") {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy 'dmc': space must be 'pre' or 'post', got '", space, "'"));
    }
    o.post_rope = space == "post";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("KV policy 'dmc': mode must be 'free' or 'learned', got '", mode, "'"));
  }
  KVASIR_ASSIGN_OR_RETURN(o.window, args.Int("window", kDmcDefaultWindow, 0, 1024));
  KVASIR_ASSIGN_OR_RETURN(
      o.sink, args.Int("sink", o.mode == DmcMode::kFree ? kFreeDefaultSink : 0, 0, 1 << 30));
  KVASIR_ASSIGN_OR_RETURN(std::string prefill, args.String("prefill", "parallel"));
  if (prefill == "serial") {
    o.prefill = DmcPrefill::kSerial;
  } else if (prefill != "parallel") {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV policy 'dmc': prefill must be 'parallel' or 'serial', got '", prefill, "'"));
  }
  KVASIR_RETURN_IF_ERROR(args.Finish());
  KVASIR_ASSIGN_OR_RETURN(auto policy, DmcPolicy::Create(o, geometry));
  return std::shared_ptr<const KvPolicy>(std::move(policy));
}

int64_t DmcPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                                int64_t n_tokens) const {
  if (options_.mode != DmcMode::kFree) return UniformTablePages(geometry, page_size, n_tokens);
  // The sinks and the recent window keep a slot per token; the rest merges toward the ratio.
  const int64_t kept = std::min<int64_t>(n_tokens, int64_t{options_.sink} + options_.recent);
  const auto merged =
      static_cast<int64_t>(std::ceil(static_cast<double>(n_tokens - kept) / options_.ratio));
  return UniformTablePages(geometry, page_size, kept + merged);
}

}  // namespace kvasir::kvcache
