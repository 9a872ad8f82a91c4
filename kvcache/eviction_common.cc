// Helpers shared by the streaming, h2o and lococo policies and the append path
// (kvcache/eviction_common.h).
#include "kvcache/eviction_common.h"

#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace kvasir::kvcache::internal {

HeadRows RowsOf(const LayerInputs& in, const SeqSpan& span, int32_t kv_head, const KvGeometry& g) {
  const int64_t hd = g.head_dim;
  HeadRows r;
  r.q = in.q + span.begin * in.q_stride + static_cast<int64_t>(kv_head) * g.group() * hd;
  r.q_stride = in.q_stride;
  r.k = in.k + span.begin * in.k_stride + static_cast<int64_t>(kv_head) * hd;
  r.k_stride = in.k_stride;
  r.v = in.v + span.begin * in.v_stride + static_cast<int64_t>(kv_head) * hd;
  r.v_stride = in.v_stride;
  r.out = in.out + span.begin * in.out_stride + static_cast<int64_t>(kv_head) * g.group() * hd;
  r.out_stride = in.out_stride;
  r.pos = in.pos + span.begin;
  r.count = span.count;
  return r;
}

void RotateRows(const HeadRows& r, const KvGeometry& g, kernels::Backend& backend) {
  backend.Rope(r.q, r.count, r.q_stride, g.group(), g.head_dim, g.n_rot, r.pos, g.rope_base,
               g.rope_layout);
  backend.Rope(r.k, r.count, r.k_stride, 1, g.head_dim, g.n_rot, r.pos, g.rope_base, g.rope_layout);
}

void RotateSpans(const LayerInputs& in, const KvGeometry& g, kernels::Backend& backend) {
  const size_t n = in.seqs.size();
  for (size_t s = 0; s < n;) {
    const int64_t begin = in.seqs[s].begin;
    int64_t end = begin + in.seqs[s].count;
    size_t next = s + 1;
    for (; next < n && in.seqs[next].begin == end; ++next) end += in.seqs[next].count;
    if (end > begin) {
      backend.Rope(in.q + begin * in.q_stride, end - begin, in.q_stride, g.n_head, g.head_dim,
                   g.n_rot, in.pos + begin, g.rope_base, g.rope_layout);
      backend.Rope(in.k + begin * in.k_stride, end - begin, in.k_stride, g.n_head_kv, g.head_dim,
                   g.n_rot, in.pos + begin, g.rope_base, g.rope_layout);
    }
    s = next;
  }
}

kernels::SlotPool SlotPoolOf(KvCache& cache) {
  PagePool& pool = cache.pool();
  return {.data = pool.base(),
          .page_size = pool.page_size(),
          .head_dim = pool.head_dim(),
          .dtype = pool.dtype()};
}

int64_t GlobalSlot(const KvCache& cache, const HeadTable& t, int32_t slot) {
  const int32_t page_size = cache.pool().page_size();
  return int64_t{t.pages[slot / page_size]} * page_size + slot % page_size;
}

void SlotWritePlan::Add(const KvCache& cache, const LayerInputs& in, const SeqSpan& span, int32_t h,
                        int32_t i, const HeadTable& kt, const HeadTable& vt, int32_t slot) {
  const int64_t row = int64_t{span.begin} + i;
  const int64_t head = int64_t{h} * cache.geometry().head_dim;
  k_src_.push_back(row * in.k_stride + head);
  k_dst_.push_back(GlobalSlot(cache, kt, slot));
  v_src_.push_back(row * in.v_stride + head);
  v_dst_.push_back(GlobalSlot(cache, vt, slot));
}

void SlotWritePlan::Run(KvCache& cache, const LayerInputs& in, kernels::Backend& backend) {
  if (empty()) return;
  kernels::SlotWrites w;
  w.pool = SlotPoolOf(cache);
  w.n = static_cast<int64_t>(k_dst_.size());
  w.src = in.k;
  w.src_offsets = k_src_.data();
  w.dst_slots = k_dst_.data();
  backend.WriteSlots(w);
  w.src = in.v;
  w.src_offsets = v_src_.data();
  w.dst_slots = v_dst_.data();
  backend.WriteSlots(w);
  Clear();
}

void SlotWritePlan::Clear() {
  k_src_.clear();
  k_dst_.clear();
  v_src_.clear();
  v_dst_.clear();
}

kernels::AttentionItem ItemOf(const HeadRows& rows, int32_t first, int32_t n_q, int32_t row,
                              int32_t n_keys, int32_t causal_base) {
  kernels::AttentionItem item;
  item.q = rows.q + first * rows.q_stride;
  item.q_token_stride = rows.q_stride;
  item.n_q = n_q;
  item.k_row = row;
  item.v_row = row;
  item.n_keys = n_keys;
  item.causal_base = causal_base;
  item.out = rows.out + first * rows.out_stride;
  item.out_token_stride = rows.out_stride;
  return item;
}

void LayerPlan::Clear() {
  k_tables.clear();
  v_tables.clear();
  writes.Clear();
  items.clear();
}

void LayerPlan::BuildViews(const KvCache& cache) {
  k_view = cache.BuildView(k_tables, k_storage);
  v_view = cache.BuildView(v_tables, v_storage);
}

kernels::AttentionBatch LayerPlan::Batch(const KvGeometry& g) const {
  kernels::AttentionBatch b;
  b.k = k_view;
  b.v = v_view;
  b.group = g.group();
  b.head_dim = g.head_dim;
  b.scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  b.items = items;
  return b;
}

namespace {

void FillView(const KvCache& cache, const HeadTable& t, int32_t* indptr, int32_t* last,
              kernels::PagedKvView& view) {
  const PagePool& pool = cache.pool();
  indptr[0] = 0;
  indptr[1] = static_cast<int32_t>(t.pages.size());
  *last = t.pages.empty() ? 0 : pool.page_size();
  view.num_rows = 1;
  view.indptr = indptr;
  view.indices = t.pages.data();
  view.last_page_len = last;
  view.page_size = pool.page_size();
  view.head_dim = pool.head_dim();
  view.dtype = pool.dtype();
  view.pool = pool.base();
}

}  // namespace

TableAttention::TableAttention(const KvCache& cache, const HeadTable& k, const HeadTable& v) {
  const KvGeometry& g = cache.geometry();
  group_ = g.group();
  head_dim_ = g.head_dim;
  scale_ = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  FillView(cache, k, k_indptr_, &k_last_, k_view_);
  FillView(cache, v, v_indptr_, &v_last_, v_view_);
}

void TableAttention::Run(kernels::Backend& backend, const HeadRows& rows, int32_t first, int32_t n,
                         int32_t n_keys, int32_t causal_base, float* col_sums) const {
  kernels::AttentionItem item = ItemOf(rows, first, n, 0, n_keys, causal_base);
  item.col_sums = col_sums;
  kernels::AttentionBatch b;
  b.k = k_view_;
  b.v = v_view_;
  b.group = group_;
  b.head_dim = head_dim_;
  b.scale = scale_;
  b.items = std::span<const kernels::AttentionItem>(&item, 1);
  backend.Attention(b);
}

void TruncateEveryTable(KvCache& cache, SequenceKv& seq) {
  const KvGeometry& g = cache.geometry();
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      cache.Truncate(seq.k(l, h), seq.k(l, h).length);
      cache.Truncate(seq.v(l, h), seq.v(l, h).length);
    }
  }
}

absl::Status CheckReserved(const KvCache& cache, const HeadTable& k, const HeadTable& v,
                           int64_t need) {
  const int64_t page_size = cache.pool().page_size();
  if (static_cast<int64_t>(k.pages.size()) * page_size < need ||
      static_cast<int64_t>(v.pages.size()) * page_size < need) {
    return absl::FailedPreconditionError("KV tables were not reserved before Attend");
  }
  return absl::OkStatus();
}

void StateWriter::U32(uint32_t v) {
  const char bytes[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
                         static_cast<char>((v >> 16) & 0xff), static_cast<char>((v >> 24) & 0xff)};
  out_.append(bytes, 4);
}

void StateWriter::F32(float v) { U32(std::bit_cast<uint32_t>(v)); }

void StateWriter::I32s(std::span<const int32_t> v) {
  for (int32_t x : v) I32(x);
}

void StateWriter::F32s(std::span<const float> v) {
  for (float x : v) F32(x);
}

bool StateReader::U32(uint32_t& v) {
  if (remaining() < 4) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(in_.data() + at_);
  v = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
      (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  at_ += 4;
  return true;
}

bool StateReader::I32(int32_t& v) {
  uint32_t u;
  if (!U32(u)) return false;
  v = static_cast<int32_t>(u);
  return true;
}

bool StateReader::F32(float& v) {
  uint32_t u;
  if (!U32(u)) return false;
  v = std::bit_cast<float>(u);
  return true;
}

bool StateReader::I32s(std::span<int32_t> v) {
  if (remaining() / 4 < v.size()) return false;
  for (int32_t& x : v) I32(x);
  return true;
}

bool StateReader::F32s(std::span<float> v) {
  if (remaining() / 4 < v.size()) return false;
  for (float& x : v) F32(x);
  return true;
}

void WriteStateHeader(StateWriter& w, const StateHeader& header) {
  w.U32(header.magic);
  w.U32(header.version);
  w.I32(header.n_layer);
  w.I32(header.n_head_kv);
  w.I32(header.params[0]);
  w.I32(header.params[1]);
}

size_t CountedRecordBytes(std::string_view rest, size_t item_bytes) {
  StateReader r(rest);
  int32_t n = 0;
  if (!r.I32(n) || n < 0) return 0;
  return 4 + static_cast<size_t>(n) * item_bytes;
}

absl::Status ReadStateHeader(StateReader& r, const StateHeader& expected, std::string_view spec) {
  const char* policy = expected.policy;
  uint32_t magic = 0, version = 0;
  int32_t n_layer = 0, n_kv = 0, p0 = 0, p1 = 0;
  if (!r.U32(magic) || magic != expected.magic) {
    return absl::InvalidArgumentError(
        absl::StrCat(policy, " state: bad magic (not ", expected.article, " ", policy, " state)"));
  }
  if (!r.U32(version) || version != expected.version) {
    return absl::InvalidArgumentError(
        absl::StrCat(policy, " state: unsupported version ", version));
  }
  if (!r.I32(n_layer) || !r.I32(n_kv) || !r.I32(p0) || !r.I32(p1)) {
    return absl::InvalidArgumentError(absl::StrCat(policy, " state: truncated header"));
  }
  if (n_layer != expected.n_layer || n_kv != expected.n_head_kv || p0 != expected.params[0] ||
      p1 != expected.params[1]) {
    return absl::InvalidArgumentError(absl::StrCat(
        policy, " state: saved for ", n_layer, " layers x ", n_kv, " heads, ",
        expected.param_names[0], " ", p0, ", ", expected.param_names[1], " ", p1, "; this is ",
        ToAbsl(spec), " on ", expected.n_layer, " x ", expected.n_head_kv));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::kvcache::internal
