// Private helpers of the policies that keep a subset of tokens per (sequence, layer, KV head)
// (streaming, h2o, lococo; dmc shares the table bookkeeping) and of the append path (full,
// kvcache/attention.cc): reserving and trimming every table, per-head access to a layer's inputs,
// the plan of a layer call that backend operations run (RoPE of the spans' rows, slot writes,
// attention items over the layer's CSR views), attention over one K/V table pair through a
// one-row CSR view, and the little-endian byte format of the SaveState blobs.
// Not part of the kvcache API: include only from kvcache/*_policy.cc and kvcache/attention.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "kernels/backend.h"
#include "kernels/types.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache::internal {

// Reserves every K and V table of `seq`: plan(table) gives the {slots, first_write} that
// KvCache::Reserve takes for that table.
template <typename Plan>
absl::Status ReserveEveryTable(KvCache& cache, SequenceKv& seq, Plan&& plan) {
  const KvGeometry& g = cache.geometry();
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        const std::pair<int32_t, int32_t> p = plan(static_cast<const HeadTable&>(*t));
        KVASIR_RETURN_IF_ERROR(cache.Reserve(*t, p.first, p.second));
      }
    }
  }
  return absl::OkStatus();
}

// Gives back the pages past every table's length (what a step reserved and did not fill).
void TruncateEveryTable(KvCache& cache, SequenceKv& seq);

// FailedPrecondition unless the pages of both tables hold at least `need` slots.
absl::Status CheckReserved(const KvCache& cache, const HeadTable& k, const HeadTable& v,
                           int64_t need);

// The rows of one KV head of one sequence span in a layer's buffers. q and out point at the first
// query head of the head's GQA group (group * head_dim floats per token).
struct HeadRows {
  float* q = nullptr;
  int64_t q_stride = 0;
  float* k = nullptr;
  int64_t k_stride = 0;
  const float* v = nullptr;
  int64_t v_stride = 0;
  float* out = nullptr;
  int64_t out_stride = 0;
  const int32_t* pos = nullptr;
  int32_t count = 0;
};

// Runs fn(span, kv_head, k_table, v_table) for every (sequence span, KV head) of a layer call, one
// host task each (backend.HostParallelFor: backend operations inside run on the task's thread).
template <typename Fn>
void ForEachHeadTask(const LayerInputs& in, int32_t n_head_kv, kernels::Backend& backend, Fn&& fn) {
  const auto task = [&](int64_t t, int) {
    const SeqSpan& span = in.seqs[static_cast<size_t>(t / n_head_kv)];
    const int32_t h = static_cast<int32_t>(t % n_head_kv);
    fn(span, h, span.seq->k(in.layer, h), span.seq->v(in.layer, h));
  };
  // std::cref: the std::function refers to `task` instead of copying it to the heap.
  backend.HostParallelFor(static_cast<int64_t>(in.seqs.size()) * n_head_kv, std::cref(task));
}

HeadRows RowsOf(const LayerInputs& in, const SeqSpan& span, int32_t kv_head,
                const KvGeometry& geometry);

// Applies RoPE at the tokens' positions to the group's queries and the key, in place.
void RotateRows(const HeadRows& rows, const KvGeometry& geometry, kernels::Backend& backend);

// Applies RoPE to the q and k rows of every sequence span of a layer call, in place: one Rope call
// for q and one for k per run of adjacent spans (every head of a token turns by the same angles,
// so this is what RotateRows does head by head).
void RotateSpans(const LayerInputs& in, const KvGeometry& geometry, kernels::Backend& backend);

// The page pool as the backend's slot operations see it, and the global index (page * page_size
// + slot) of slot `slot` of a table (which must hold its page).
kernels::SlotPool SlotPoolOf(KvCache& cache);
int64_t GlobalSlot(const KvCache& cache, const HeadTable& table, int32_t slot);

// Slot writes of a layer call, from the rows of its k and v buffers into K and V tables: the plan
// arrays of two Backend::WriteSlots calls. Reused between calls (hold one per thread).
class SlotWritePlan {
 public:
  // Token i of `span`, KV head h: its key into slot `slot` of kt, its value into the same slot of
  // vt.
  void Add(const KvCache& cache, const LayerInputs& in, const SeqSpan& span, int32_t h, int32_t i,
           const HeadTable& kt, const HeadTable& vt, int32_t slot);
  bool empty() const { return k_dst_.empty(); }
  // Issues the writes (WriteSlots for the keys, then for the values) and forgets them.
  void Run(KvCache& cache, const LayerInputs& in, kernels::Backend& backend);
  void Clear();

 private:
  std::vector<int64_t> k_src_, k_dst_, v_src_, v_dst_;  // [writes] offsets in floats; slots
};

// The attention item of queries [first, first + n_q) of `rows` over keys [0, n_keys) of row `row`
// of the batch's K and V views; causal_base as AttentionItem has it.
kernels::AttentionItem ItemOf(const HeadRows& rows, int32_t first, int32_t n_q, int32_t row,
                              int32_t n_keys, int32_t causal_base);

// The plan of one layer call of the policies whose tables are rows of the layer's CSR views
// (full, streaming, h2o): row span_index * n_head_kv + kv_head holds that pair's K and V tables.
// Plan arrays, reused between calls (hold one per thread).
struct LayerPlan {
  std::vector<const HeadTable*> k_tables, v_tables;  // [row]
  KvCache::ViewStorage k_storage, v_storage;
  kernels::PagedKvView k_view, v_view;  // valid after BuildViews
  SlotWritePlan writes;
  std::vector<kernels::AttentionItem> items;

  void Clear();
  // The views over the tables at their current lengths (which must cover every item's keys).
  void BuildViews(const KvCache& cache);
  // An attention batch of the items over the views.
  kernels::AttentionBatch Batch(const KvGeometry& geometry) const;
};

// Attention of some of a head's queries over slots [0, n_keys) of one K table and one V table,
// through one-row views that cover every reserved page of the tables (so the tables' lengths may
// change between calls without rebuilding anything). Holds pointers into itself: not movable.
// Safe to use from a worker thread for tables no other thread writes.
class TableAttention {
 public:
  TableAttention(const KvCache& cache, const HeadTable& k, const HeadTable& v);
  TableAttention(const TableAttention&) = delete;
  TableAttention& operator=(const TableAttention&) = delete;

  // Queries [first, first + n) of `rows` attend over keys [0, n_keys), through one backend
  // Attention call; causal_base as AttentionItem has it. col_sums (optional, [n_keys], backend
  // memory) is added to.
  void Run(kernels::Backend& backend, const HeadRows& rows, int32_t first, int32_t n,
           int32_t n_keys, int32_t causal_base, float* col_sums) const;

 private:
  int32_t group_ = 1;
  int32_t head_dim_ = 0;
  float scale_ = 1.0f;
  int32_t k_indptr_[2] = {0, 0};
  int32_t v_indptr_[2] = {0, 0};
  int32_t k_last_ = 0;
  int32_t v_last_ = 0;
  kernels::PagedKvView k_view_;
  kernels::PagedKvView v_view_;
};

// Appends little-endian values to a byte string.
class StateWriter {
 public:
  explicit StateWriter(std::string& out) : out_(out) {}
  void U32(uint32_t v);
  void I32(int32_t v) { U32(static_cast<uint32_t>(v)); }
  void F32(float v);
  void I32s(std::span<const int32_t> v);
  void F32s(std::span<const float> v);

 private:
  std::string& out_;
};

// The start of the h2o and lococo SaveState blobs: magic, version, the geometry the state was
// saved for and the policy's two integer parameters; the names are for error messages.
struct StateHeader {
  const char* policy = "";   // "h2o"
  const char* article = "";  // "an": "not an h2o state"
  uint32_t magic = 0;
  uint32_t version = 0;
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  const char* param_names[2] = {"", ""};
  int32_t params[2] = {0, 0};
};

void WriteStateHeader(StateWriter& w, const StateHeader& header);
// Its size, and where n_head_kv sits in it (KvPolicy::StateLayout).
inline constexpr size_t kStateHeaderBytes = 6 * 4;
inline constexpr size_t kStateHeaderHeadsAt = 3 * 4;
// The size of a record that starts with an int32 count n followed by n items of `item_bytes`
// (0 when `rest` cannot hold the count or it is negative).
size_t CountedRecordBytes(std::string_view rest, size_t item_bytes);

// Reads what StateWriter wrote; every read fails (returns false) past the end.
class StateReader {
 public:
  explicit StateReader(std::string_view in) : in_(in) {}
  bool U32(uint32_t& v);
  bool I32(int32_t& v);
  bool F32(float& v);
  bool I32s(std::span<int32_t> v);
  bool F32s(std::span<float> v);
  size_t remaining() const { return in_.size() - at_; }

 private:
  std::string_view in_;
  size_t at_ = 0;
};

// Reads a header and checks it equals `expected` (this policy, with `spec`, on this sequence's
// geometry); InvalidArgument saying what differs otherwise.
absl::Status ReadStateHeader(StateReader& r, const StateHeader& expected, std::string_view spec);

}  // namespace kvasir::kvcache::internal
