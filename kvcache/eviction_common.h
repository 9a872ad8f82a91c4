// Private helpers of the policies that keep a subset of tokens per (sequence, layer, KV head)
// (streaming, h2o, lococo; dmc shares the table bookkeeping): reserving and trimming every table,
// per-head access to a layer's inputs, attention over one K/V table pair through a one-row CSR
// view, and the little-endian byte format of their SaveState blobs.
// Not part of the kvcache API: include only from kvcache/*_policy.cc.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
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
// pool task each.
template <typename Fn>
void ForEachHeadTask(const LayerInputs& in, int32_t n_head_kv, kernels::cpu::CpuContext& ctx,
                     Fn&& fn) {
  ctx.pool->ParallelFor(static_cast<int64_t>(in.seqs.size()) * n_head_kv, [&](int64_t task, int) {
    const SeqSpan& span = in.seqs[static_cast<size_t>(task / n_head_kv)];
    const int32_t h = static_cast<int32_t>(task % n_head_kv);
    fn(span, h, span.seq->k(in.layer, h), span.seq->v(in.layer, h));
  });
}

HeadRows RowsOf(const LayerInputs& in, const SeqSpan& span, int32_t kv_head,
                const KvGeometry& geometry);

// Applies RoPE at the tokens' positions to the group's queries and the key, in place.
void RotateRows(const HeadRows& rows, const KvGeometry& geometry);

// Attention of some of a head's queries over slots [0, n_keys) of one K table and one V table,
// through one-row views that cover every reserved page of the tables (so the tables' lengths may
// change between calls without rebuilding anything). Holds pointers into itself: not movable.
// Safe to use from a worker thread for tables no other thread writes.
class TableAttention {
 public:
  TableAttention(const KvCache& cache, const HeadTable& k, const HeadTable& v);
  TableAttention(const TableAttention&) = delete;
  TableAttention& operator=(const TableAttention&) = delete;

  // Queries [first, first + n) of `rows` attend over keys [0, n_keys); query i sees the keys
  // below n_visible[i] when n_visible is given. col_sums (optional, [n_keys]) is added to.
  void Run(const HeadRows& rows, int32_t first, int32_t n, int32_t n_keys, const int32_t* n_visible,
           float* col_sums) const;

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

// Copies slot `from` of a table to slot `to` (both must be held), in the pool's dtype.
void CopySlot(KvCache& cache, const HeadTable& table, int32_t from, int32_t to);

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
