// The `pod` policy (kvcache/pod_policy.h): its spec parsing, table reservation, the split
// attention (proximal over own keys, distant over anchor keys, merged by log-sum-exp) and the
// versioned state blob.
#include "kvcache/pod_policy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/eviction_common.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {
namespace {

// State blob: "KPOD", u32 version, i32 sink, i32 window, i32 n_layer, i32 n_head_kv,
// i64 n_tokens, then i32 anchor[layer * n_head_kv + head]; all little-endian.
constexpr char kStateMagic[4] = {'K', 'P', 'O', 'D'};
constexpr uint32_t kStateVersion = 1;
constexpr size_t kStateHeaderBytes = 4 + 4 + 4 * 4 + 8;

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

// One partial attention of a query: `count` keys from slot k_begin of its own K table (or of the
// anchor's), paired with the values from slot v_begin of its own V table.
struct Run {
  bool anchor_keys = false;
  int32_t k_begin = 0;
  int32_t v_begin = 0;
  int32_t count = 0;
};

// Per (span, KV head) of one Attend call.
struct Task {
  int64_t t0 = 0;       // tokens in the cache before this step (the first new token's index)
  bool anchor = false;  // this (layer, head) is its group's anchor
};

}  // namespace

PodPolicy::PodPolicy(int32_t sink, int32_t window, PodGroups groups, std::string groups_spec,
                     std::string adapter)
    : sink_(sink),
      window_(window),
      groups_(std::move(groups)),
      groups_spec_(std::move(groups_spec)),
      adapter_(std::move(adapter)) {}

std::string PodPolicy::spec() const {
  // The adapter stays in the canonical spec: a sequence of the adapted model is never restored
  // into another (the block codec compares specs).
  return absl::StrCat("pod:sink=", sink_, ",window=", window_, ",", groups_spec_,
                      adapter_.empty() ? "" : ",weights=", adapter_);
}

int32_t PodPolicy::RingSlot(int64_t j) const {
  if (j < sink_) return static_cast<int32_t>(j);
  return static_cast<int32_t>(sink_ + (j - sink_) % window_);
}

int32_t PodPolicy::FirstKWrite(int64_t t, int64_t n) const {
  // Tokens t..t+n-1 wrap around the ring when there are more of them than ring slots from t's
  // slot to the end; then the whole ring is written.
  const int32_t first = RingSlot(t);
  return t >= sink_ && n > ring_capacity() - first ? sink_ : first;
}

int64_t PodPolicy::HeldSlots(int64_t tokens) const {
  const int64_t pairs = int64_t{groups_.n_layer()} * groups_.n_head_kv();
  const int64_t anchors = groups_.num_anchors();
  return pairs * tokens + anchors * tokens +
         (pairs - anchors) * std::min<int64_t>(tokens, ring_capacity());
}

absl::Status PodPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  const KvGeometry& g = cache.geometry();
  if (g.n_layer != groups_.n_layer() || g.n_head_kv != groups_.n_head_kv()) {
    return absl::InvalidArgumentError("pod: the policy was made for another model geometry");
  }
  if (n_new <= 0) return absl::OkStatus();
  const int64_t t = seq.n_tokens();
  const int64_t t1 = t + n_new;
  if (t1 > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("pod: sequence longer than 2^30 tokens");
  }
  const int32_t first_ring_write = FirstKWrite(t, n_new);
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      HeadTable& v = seq.v(l, h);
      KVASIR_RETURN_IF_ERROR(cache.Reserve(v, static_cast<int32_t>(t1), static_cast<int32_t>(t)));
      HeadTable& k = seq.k(l, h);
      if (groups_.is_anchor(l, h)) {
        KVASIR_RETURN_IF_ERROR(cache.Reserve(k, static_cast<int32_t>(t1), static_cast<int32_t>(t)));
      } else {
        KVASIR_RETURN_IF_ERROR(cache.Reserve(k, static_cast<int32_t>(std::min(t1, ring_capacity())),
                                             first_ring_write));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status PodPolicy::Attend(KvCache& cache, const LayerInputs& in,
                               kernels::Backend& backend) const {
  // On a backend the host cannot address (a GPU), rows are written and partial attentions merged
  // by the backend, one row and one run at a time on the host's schedule.
  const bool host = backend.host_addressable();
  const KvGeometry& g = cache.geometry();
  const int32_t l = in.layer;
  if (g.n_layer != groups_.n_layer() || g.n_head_kv != groups_.n_head_kv() || l < 0 ||
      l >= g.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat("pod: layer ", l, " does not fit the policy's geometry"));
  }
  const int32_t n_kv = g.n_head_kv;
  const int32_t hd = g.head_dim;
  const int32_t group = g.group();
  const int64_t page_size = cache.pool().page_size();

  // Serial part: check the tables, grow their lengths (pages were reserved) and build the views.
  // Scratch reused across calls, reached from the parallel loop through references.
  thread_local std::vector<const HeadTable*> tl_k_tables, tl_v_tables;
  thread_local std::vector<Task> tl_tasks;
  thread_local KvCache::ViewStorage tl_k_storage, tl_v_storage;
  std::vector<const HeadTable*>& k_tables = tl_k_tables;  // [task * 2 + {own, anchor}]
  std::vector<const HeadTable*>& v_tables = tl_v_tables;  // [task]
  std::vector<Task>& tasks = tl_tasks;
  KvCache::ViewStorage& k_storage = tl_k_storage;
  KvCache::ViewStorage& v_storage = tl_v_storage;
  k_tables.clear();
  v_tables.clear();
  tasks.clear();
  // Check every table first, so that an error leaves them all as they were.
  for (const SeqSpan& span : in.seqs) {
    const int64_t t0 = span.seq->n_tokens();
    const int64_t t1 = t0 + span.count;
    for (int32_t h = 0; h < n_kv; ++h) {
      const HeadTable& kt = span.seq->k(l, h);
      const HeadTable& vt = span.seq->v(l, h);
      const bool anchor = groups_.is_anchor(l, h);
      const int64_t k_before = anchor ? t0 : std::min(t0, ring_capacity());
      const int64_t k_after = anchor ? t1 : std::min(t1, ring_capacity());
      if (vt.length != t0 || kt.length != k_before) {
        return absl::FailedPreconditionError(absl::StrCat(
            "pod: tables of layer ", l, " head ", h, " hold ", kt.length, " K and ", vt.length,
            " V slots, expected ", k_before, " and ", t0, " for a sequence of ", t0, " tokens"));
      }
      // Room for every slot, and every page this step writes private (Reserve's copy-on-write).
      const int64_t k_first = anchor ? t0 : FirstKWrite(t0, span.count);
      const auto writable = [&](const HeadTable& t, int64_t first, int64_t end) {
        if (static_cast<int64_t>(t.pages.size()) * page_size < end) return false;
        for (int64_t p = first / page_size; p * page_size < end; ++p) {
          if (cache.pool().refcount(t.pages[p]) != 1) return false;
        }
        return true;
      };
      if (span.count > 0 && (!writable(kt, k_first, k_after) || !writable(vt, t0, t1))) {
        return absl::FailedPreconditionError("pod: KV tables were not reserved before Attend");
      }
      if (!anchor && span.seq->k(groups_.anchor(l, h), h).length != t1) {
        return absl::FailedPreconditionError(absl::StrCat("pod: anchor layer ",
                                                          groups_.anchor(l, h), " of layer ", l,
                                                          " head ", h, " has not run this step"));
      }
    }
  }
  for (const SeqSpan& span : in.seqs) {
    const int64_t t0 = span.seq->n_tokens();
    const int64_t t1 = t0 + span.count;
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTable& kt = span.seq->k(l, h);
      HeadTable& vt = span.seq->v(l, h);
      const bool anchor = groups_.is_anchor(l, h);
      kt.length = static_cast<int32_t>(anchor ? t1 : std::min(t1, ring_capacity()));
      vt.length = static_cast<int32_t>(t1);
      k_tables.push_back(&kt);
      k_tables.push_back(anchor ? &kt : &span.seq->k(groups_.anchor(l, h), h));
      v_tables.push_back(&vt);
      tasks.push_back({t0, anchor});
    }
  }
  const kernels::PagedKvView k_view = cache.BuildView(k_tables, k_storage);
  const kernels::PagedKvView v_view = cache.BuildView(v_tables, v_storage);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Off the host, each task's partial output and log-sum-exps live in backend memory.
  const size_t per_task = static_cast<size_t>(group) * (hd + 2);
  BackendScratch call_scratch;
  float* device_parts = nullptr;
  if (!host) {
    BackendScratch& scratch = in.scratch != nullptr ? *in.scratch : call_scratch;
    device_parts =
        static_cast<float*>(scratch.Get(backend, sizeof(float) * per_task * tasks.size()));
    if (device_parts == nullptr) {
      return absl::ResourceExhaustedError("out of backend memory for pod's partial attentions");
    }
  }
  // Row `row` (the step's memory) into slot `slot` of `table`.
  const auto store = [&](const HeadTable& table, int32_t slot, const float* row) {
    if (host) {
      cache.WriteSlot(table, slot, row);
      return;
    }
    const int64_t offset = 0, dst = internal::GlobalSlot(cache, table, slot);
    kernels::SlotWrites w;
    w.pool = internal::SlotPoolOf(cache);
    w.src = row;
    w.src_offsets = &offset;
    w.dst_slots = &dst;
    w.n = 1;
    backend.WriteSlots(w);
  };

  // One host task per (span, KV head); the backend operations inside run on the task's thread.
  const auto run = [&](int64_t task, int) {
    const SeqSpan& span = in.seqs[static_cast<size_t>(task / n_kv)];
    const int32_t h = static_cast<int32_t>(task % n_kv);
    const Task& info = tasks[static_cast<size_t>(task)];
    const int32_t own_row = static_cast<int32_t>(2 * task);
    const int32_t anchor_row = own_row + 1;
    const int32_t v_row = static_cast<int32_t>(task);
    const HeadTable& kt = *k_tables[own_row];
    const HeadTable& vt = *v_tables[v_row];
    float* q = in.q + span.begin * in.q_stride + static_cast<int64_t>(h) * group * hd;
    float* k = in.k + span.begin * in.k_stride + static_cast<int64_t>(h) * hd;
    const float* v = in.v + span.begin * in.v_stride + static_cast<int64_t>(h) * hd;
    float* out = in.out + span.begin * in.out_stride + static_cast<int64_t>(h) * group * hd;
    const int32_t* pos = in.pos + span.begin;
    backend.Rope(q, span.count, in.q_stride, group, hd, g.n_rot, pos, g.rope_base, g.rope_layout);
    backend.Rope(k, span.count, in.k_stride, 1, hd, g.n_rot, pos, g.rope_base, g.rope_layout);
    for (int32_t i = 0; i < span.count; ++i) {
      store(vt, static_cast<int32_t>(info.t0 + i), v + i * in.v_stride);
    }

    // One item at a time over the layer's views.
    kernels::AttentionItem a;
    a.q_token_stride = in.q_stride;
    a.v_row = v_row;
    a.out_token_stride = in.out_stride;
    kernels::AttentionBatch batch;
    batch.k = k_view;
    batch.v = v_view;
    batch.group = group;
    batch.head_dim = hd;
    batch.scale = scale;
    batch.items = std::span<const kernels::AttentionItem>(&a, 1);

    if (info.anchor) {
      // Every key is the layer's own: plain causal attention, as the full cache computes it.
      for (int32_t i = 0; i < span.count; ++i) {
        store(kt, static_cast<int32_t>(info.t0 + i), k + i * in.k_stride);
      }
      a.q = q;
      a.n_q = span.count;
      a.k_row = own_row;
      a.n_keys = vt.length;
      a.causal_base = static_cast<int32_t>(info.t0);
      a.out = out;
      backend.Attention(batch);
      return;
    }

    // Non-anchor: queries one by one, because each has its own proximal band, and because a
    // query's key goes into the ring only after the queries before it no longer need that slot.
    thread_local std::vector<float> tl_parts;
    float* parts = device_parts + static_cast<size_t>(task) * per_task;
    if (host) {
      tl_parts.resize(per_task);
      parts = tl_parts.data();
    }
    float* part_out = parts;  // [group, hd], then lse [group], part_lse [group]
    float* lse = part_out + static_cast<size_t>(group) * hd;
    float* part_lse = lse + group;
    for (int32_t i = 0; i < span.count; ++i) {
      const int64_t t = info.t0 + i;
      store(kt, RingSlot(t), k + i * in.k_stride);
      // The partial attentions of query t, proximal first, in token order.
      Run runs[4];
      int n_runs = 0;
      const int64_t w0 = std::max<int64_t>(sink_, t - window_ + 1);  // first window token
      if (t < sink_ || w0 == sink_) {
        // No distant key, and slots 0..t hold tokens 0..t in order: one run, as in full.
        runs[n_runs++] = {false, 0, 0, static_cast<int32_t>(t + 1)};
      } else {
        if (sink_ > 0) runs[n_runs++] = {false, 0, 0, sink_};
        const int32_t s0 = RingSlot(w0);
        const int64_t in_window = t - w0 + 1;
        const int64_t first = std::min<int64_t>(in_window, ring_capacity() - s0);
        runs[n_runs++] = {false, s0, static_cast<int32_t>(w0), static_cast<int32_t>(first)};
        if (first < in_window) {
          runs[n_runs++] = {false, sink_, static_cast<int32_t>(w0 + first),
                            static_cast<int32_t>(in_window - first)};
        }
        // Distant: tokens sink .. w0 - 1 with the anchor's keys (its slot j holds token j).
        runs[n_runs++] = {true, sink_, sink_, static_cast<int32_t>(w0 - sink_)};
      }
      float* out_i = out + i * in.out_stride;
      a.q = q + i * in.q_stride;
      a.n_q = 1;
      a.causal_base = -1;
      for (int r = 0; r < n_runs; ++r) {
        a.k_row = runs[r].anchor_keys ? anchor_row : own_row;
        a.k_begin = runs[r].k_begin;
        a.v_begin = runs[r].v_begin;
        a.n_keys = runs[r].count;
        a.out = r == 0 ? out_i : part_out;
        a.lse = r == 0 ? lse : part_lse;
        backend.Attention(batch);
        if (r > 0) backend.MergeAttention(out_i, lse, part_out, part_lse, group, hd);
      }
    }
  };
  // std::cref: the std::function refers to `run` instead of copying it to the heap.
  backend.HostParallelFor(static_cast<int64_t>(tasks.size()), std::cref(run));
  return absl::OkStatus();
}

absl::Status PodPolicy::SaveState(const SequenceKv& seq, std::string& out) const {
  out.clear();
  out.append(kStateMagic, 4);
  PutU32(out, kStateVersion);
  PutU32(out, static_cast<uint32_t>(sink_));
  PutU32(out, static_cast<uint32_t>(window_));
  PutU32(out, static_cast<uint32_t>(groups_.n_layer()));
  PutU32(out, static_cast<uint32_t>(groups_.n_head_kv()));
  PutU64(out, static_cast<uint64_t>(seq.n_tokens()));
  for (int32_t l = 0; l < groups_.n_layer(); ++l) {
    for (int32_t h = 0; h < groups_.n_head_kv(); ++h) {
      PutU32(out, static_cast<uint32_t>(groups_.anchor(l, h)));
    }
  }
  return absl::OkStatus();
}

std::optional<KvPolicy::StateLayout> PodPolicy::state_layout() const {
  // The header (n_head_kv after magic, version, sink, window, n_layer), then per (layer, head)
  // its anchor layer.
  return StateLayout{
      .header_bytes = kStateHeaderBytes,
      .n_head_kv_at = 4 + 4 + 3 * 4,
      .record_bytes = [](std::string_view rest) -> size_t { return rest.size() >= 4 ? 4 : 0; }};
}

absl::Status PodPolicy::LoadState(std::string_view in, SequenceKv& seq) const {
  const auto bad = [](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("pod state: ", why));
  };
  if (in.size() < kStateHeaderBytes ||
      std::string_view(in.data(), 4) != std::string_view(kStateMagic, 4)) {
    return bad("not a pod policy state");
  }
  const char* p = in.data() + 4;
  const uint32_t version = GetU32(p);
  if (version != kStateVersion) {
    return bad(absl::StrCat("version ", version, " is not supported (this build reads ",
                            kStateVersion, ")"));
  }
  const auto sink = static_cast<int32_t>(GetU32(p + 4));
  const auto window = static_cast<int32_t>(GetU32(p + 8));
  const auto n_layer = static_cast<int32_t>(GetU32(p + 12));
  const auto n_head_kv = static_cast<int32_t>(GetU32(p + 16));
  const auto n_tokens = static_cast<int64_t>(GetU64(p + 20));
  if (sink != sink_ || window != window_) {
    return bad(absl::StrCat("saved with sink=", sink, ",window=", window,
                            ", this policy has sink=", sink_, ",window=", window_));
  }
  if (n_layer != groups_.n_layer() || n_head_kv != groups_.n_head_kv()) {
    return bad(absl::StrCat("saved for ", n_layer, " layers and ", n_head_kv,
                            " KV heads, this policy has ", groups_.n_layer(), " and ",
                            groups_.n_head_kv()));
  }
  const size_t pairs = static_cast<size_t>(n_layer) * n_head_kv;
  if (in.size() != kStateHeaderBytes + 4 * pairs) {
    return bad(absl::StrCat(in.size(), " bytes, expected ", kStateHeaderBytes + 4 * pairs));
  }
  if (n_tokens < 0 || n_tokens > (int64_t{1} << 30)) {
    return bad(absl::StrCat("bad token count ", n_tokens));
  }
  const char* anchors = in.data() + kStateHeaderBytes;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int32_t h = 0; h < n_head_kv; ++h) {
      if (static_cast<int32_t>(GetU32(anchors + 4 * (l * n_head_kv + h))) != groups_.anchor(l, h)) {
        return bad(
            absl::StrCat("saved with a different layer grouping (layer ", l, ", head ", h, ")"));
      }
    }
  }
  if (seq.n_tokens() != 0 && seq.n_tokens() != n_tokens) {
    return bad(absl::StrCat("saved at ", n_tokens, " tokens, the sequence has ", seq.n_tokens()));
  }
  // Tables restored before the state must have the lengths this policy gives them; tables not
  // restored yet (all empty) are left to the caller.
  bool any = false;
  for (int32_t l = 0; l < n_layer && !any; ++l) {
    for (int32_t h = 0; h < n_head_kv; ++h) any |= seq.k(l, h).length > 0 || seq.v(l, h).length > 0;
  }
  if (any) {
    for (int32_t l = 0; l < n_layer; ++l) {
      for (int32_t h = 0; h < n_head_kv; ++h) {
        const int64_t k_len =
            groups_.is_anchor(l, h) ? n_tokens : std::min(n_tokens, ring_capacity());
        if (seq.k(l, h).length != k_len || seq.v(l, h).length != n_tokens) {
          return bad(absl::StrCat("layer ", l, " head ", h, " holds ", seq.k(l, h).length,
                                  " K and ", seq.v(l, h).length, " V slots, expected ", k_len,
                                  " and ", n_tokens));
        }
      }
    }
  }
  return absl::OkStatus();
}

PolicyResult MakePodPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  const bool has_sink = args.Has("sink");
  const bool has_window = args.Has("window");
  KVASIR_ASSIGN_OR_RETURN(int32_t sink, args.Int("sink", 4, 0, 1 << 30));
  KVASIR_ASSIGN_OR_RETURN(int32_t window, args.Int("window", 252, 1, 1 << 30));
  KVASIR_ASSIGN_OR_RETURN(std::string path, args.File("groups"));
  const bool has_group_size = args.Has("group_size");
  KVASIR_ASSIGN_OR_RETURN(int32_t group_size, args.Int("group_size", 2, 1, 1 << 30));
  // A model post-trained for PoD (train/retrofit.py pod): the engine merges this adapter.
  KVASIR_ASSIGN_OR_RETURN(std::string adapter, args.File("weights"));
  KVASIR_RETURN_IF_ERROR(args.Finish());
  if (geometry.n_layer <= 0 || geometry.n_head_kv <= 0) {
    return absl::InvalidArgumentError("KV policy 'pod': bad geometry");
  }
  if (!path.empty() && has_group_size) {
    return absl::InvalidArgumentError(
        "KV policy 'pod': give either groups=FILE or group_size=N, not both");
  }
  if (args.Has("groups") && path.empty()) {
    return absl::InvalidArgumentError("KV policy 'pod': groups= needs a file name");
  }
  if (args.Has("weights") && adapter.empty()) {
    return absl::InvalidArgumentError("KV policy 'pod': weights= needs a file name");
  }
  if (path.empty()) {
    return std::make_shared<PodPolicy>(
        sink, window, PodGroups::FixedSize(geometry.n_layer, geometry.n_head_kv, group_size),
        absl::StrCat("group_size=", group_size), adapter);
  }
  auto file = LoadPodGroupsFile(path);
  if (!file.ok()) return Annotate(file.status(), "KV policy 'pod'");
  PodGroups groups = file->groups;
  if (geometry.model_n_head_kv > 0 && groups.n_layer() == geometry.n_layer &&
      groups.n_head_kv() == geometry.model_n_head_kv && groups.n_head_kv() != geometry.n_head_kv) {
    // A tensor-parallel rank: the groups of its KV heads.
    std::vector<std::vector<std::vector<int32_t>>> lists;
    for (int32_t h = 0; h < geometry.n_head_kv; ++h) {
      lists.push_back(groups.Groups(geometry.kv_head_offset + h));
    }
    KVASIR_ASSIGN_OR_RETURN(groups,
                            PodGroups::FromLists(geometry.n_layer, geometry.n_head_kv, lists));
  }
  if (groups.n_layer() != geometry.n_layer || groups.n_head_kv() != geometry.n_head_kv) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy 'pod': groups file '", path,
                                                   "' is for ", groups.n_layer(), " layers and ",
                                                   groups.n_head_kv(), " KV heads, the model has ",
                                                   geometry.n_layer, " and ", geometry.n_head_kv));
  }
  if (!has_sink && file->sink) sink = *file->sink;
  if (!has_window && file->window) window = *file->window;
  return std::make_shared<PodPolicy>(sink, window, groups, absl::StrCat("groups=", path), adapter);
}

int64_t PodPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                                int64_t n_tokens) const {
  // Every value and the anchors' keys keep every token; the other keys keep the ring.
  const auto pages = [&](int64_t slots) { return (slots + page_size - 1) / page_size; };
  const int64_t tables = int64_t{geometry.n_layer} * geometry.n_head_kv;
  int64_t anchors = 0;
  for (int32_t l = 0; l < groups_.n_layer(); ++l) {
    for (int32_t h = 0; h < groups_.n_head_kv(); ++h) anchors += groups_.is_anchor(l, h) ? 1 : 0;
  }
  return (tables + anchors) * pages(n_tokens) +
         (tables - anchors) * pages(std::min(n_tokens, ring_capacity()));
}

}  // namespace kvasir::kvcache
