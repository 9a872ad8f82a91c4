#include "kvcache/attention.h"

#include <cmath>

#include "common/status_macros.h"

namespace kvasir::kvcache {

absl::Status ReserveAppend(KvCache& cache, SequenceKv& seq, int32_t n_new) {
  const KvGeometry& g = cache.geometry();
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        KVASIR_RETURN_IF_ERROR(cache.Reserve(*t, t->length + n_new, t->length));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status AppendAndAttend(KvCache& cache, const LayerInputs& in, kernels::cpu::CpuContext& ctx,
                             AttendObserver* observer) {
  namespace cpu = kernels::cpu;
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  const int32_t hd = g.head_dim;
  const int32_t group = g.group();
  const size_t n_seqs = in.seqs.size();

  // Serial part: grow the lengths (pages were reserved) and build the views of this layer.
  // Scratch reused across calls. The parallel loop below runs on other threads, so it must reach
  // these through references, not by naming the thread_locals (that would be the worker's own).
  thread_local std::vector<const HeadTable*> tl_k_tables, tl_v_tables;
  thread_local std::vector<int32_t> tl_old_len;
  thread_local KvCache::ViewStorage tl_k_storage, tl_v_storage;
  std::vector<const HeadTable*>& k_tables = tl_k_tables;
  std::vector<const HeadTable*>& v_tables = tl_v_tables;
  std::vector<int32_t>& old_len = tl_old_len;
  KvCache::ViewStorage& k_storage = tl_k_storage;
  KvCache::ViewStorage& v_storage = tl_v_storage;
  k_tables.clear();
  v_tables.clear();
  old_len.clear();
  for (const SeqSpan& span : in.seqs) {
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTable& kt = span.seq->k(in.layer, h);
      HeadTable& vt = span.seq->v(in.layer, h);
      if (kt.length + span.count >
              static_cast<int32_t>(kt.pages.size()) * cache.pool().page_size() ||
          vt.length + span.count >
              static_cast<int32_t>(vt.pages.size()) * cache.pool().page_size()) {
        return absl::FailedPreconditionError("KV tables were not reserved before Attend");
      }
      old_len.push_back(kt.length);
      kt.length += span.count;
      vt.length += span.count;
      k_tables.push_back(&kt);
      v_tables.push_back(&vt);
    }
  }
  const kernels::PagedKvView k_view = cache.BuildView(k_tables, k_storage);
  const kernels::PagedKvView v_view = cache.BuildView(v_tables, v_storage);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  ctx.pool->ParallelFor(static_cast<int64_t>(n_seqs) * n_kv, [&](int64_t task, int) {
    const size_t s = static_cast<size_t>(task / n_kv);
    const int32_t h = static_cast<int32_t>(task % n_kv);
    const SeqSpan& span = in.seqs[s];
    const int32_t row = static_cast<int32_t>(task);
    const int32_t base = old_len[row];
    float* q = in.q + span.begin * in.q_stride + static_cast<int64_t>(h) * group * hd;
    float* k = in.k + span.begin * in.k_stride + static_cast<int64_t>(h) * hd;
    const float* v = in.v + span.begin * in.v_stride + static_cast<int64_t>(h) * hd;
    const int32_t* pos = in.pos + span.begin;
    cpu::Rope(q, span.count, in.q_stride, group, hd, g.n_rot, pos, g.rope_base, g.rope_layout);
    cpu::Rope(k, span.count, in.k_stride, 1, hd, g.n_rot, pos, g.rope_base, g.rope_layout);
    const HeadTable& kt = *k_tables[row];
    const HeadTable& vt = *v_tables[row];
    for (int32_t i = 0; i < span.count; ++i) {
      cache.WriteSlot(kt, base + i, k + i * in.k_stride);
      cache.WriteSlot(vt, base + i, v + i * in.v_stride);
    }
    thread_local std::vector<int32_t> visible;
    thread_local std::vector<float> col_sums;
    visible.resize(span.count);
    for (int32_t i = 0; i < span.count; ++i) visible[i] = base + i + 1;
    cpu::AttentionArgs a;
    a.q = q;
    a.q_token_stride = in.q_stride;
    a.n_q = span.count;
    a.group = group;
    a.head_dim = hd;
    a.scale = scale;
    a.k = k_view;
    a.k_row = row;
    a.v = v_view;
    a.v_row = row;
    a.n_keys = kt.length;
    a.n_visible = visible.data();
    a.out = in.out + span.begin * in.out_stride + static_cast<int64_t>(h) * group * hd;
    a.out_token_stride = in.out_stride;
    if (observer != nullptr && observer->want_col_sums) {
      col_sums.assign(kt.length, 0.0f);
      a.col_sums = col_sums.data();
    }
    cpu::Attention(a);
    if (observer != nullptr && observer->want_col_sums) {
      observer->OnColumnSums(s, h, col_sums.data(), kt.length);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvasir::kvcache
