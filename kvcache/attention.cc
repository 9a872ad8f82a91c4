#include "kvcache/attention.h"

#include <algorithm>
#include <vector>

#include "common/status_macros.h"
#include "kvcache/eviction_common.h"

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

absl::Status AppendAndAttend(KvCache& cache, const LayerInputs& in, kernels::Backend& backend,
                             AttendObserver* observer) {
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  const int64_t page_size = cache.pool().page_size();
  const bool want_col_sums = observer != nullptr && observer->want_col_sums;

  // Check every table first, so that an error leaves them all as they were.
  size_t col_sums_floats = 0;
  for (const SeqSpan& span : in.seqs) {
    for (int32_t h = 0; h < n_kv; ++h) {
      const HeadTable& kt = span.seq->k(in.layer, h);
      const HeadTable& vt = span.seq->v(in.layer, h);
      if (kt.length + span.count > static_cast<int64_t>(kt.pages.size()) * page_size ||
          vt.length + span.count > static_cast<int64_t>(vt.pages.size()) * page_size) {
        return absl::FailedPreconditionError("KV tables were not reserved before Attend");
      }
      col_sums_floats += static_cast<size_t>(kt.length + span.count);
    }
  }
  BackendScratch call_scratch;
  float* col_sums = nullptr;
  if (want_col_sums) {
    BackendScratch& scratch = in.scratch != nullptr ? *in.scratch : call_scratch;
    col_sums = static_cast<float*>(
        scratch.Get(backend, std::max<size_t>(col_sums_floats, 1) * sizeof(float)));
    if (col_sums == nullptr) {
      return absl::ResourceExhaustedError("out of backend memory for the attention column sums");
    }
  }

  // The plan: grow the lengths (pages were reserved), one view row, one item and `count` slot
  // writes per (span, KV head). Plan arrays reused across calls.
  thread_local internal::LayerPlan tl_plan;
  internal::LayerPlan& plan = tl_plan;
  plan.Clear();
  size_t at = 0;  // in col_sums
  for (const SeqSpan& span : in.seqs) {
    for (int32_t h = 0; h < n_kv; ++h) {
      HeadTable& kt = span.seq->k(in.layer, h);
      HeadTable& vt = span.seq->v(in.layer, h);
      const int32_t base = kt.length;
      const int32_t row = static_cast<int32_t>(plan.k_tables.size());
      kt.length += span.count;
      vt.length += span.count;
      plan.k_tables.push_back(&kt);
      plan.v_tables.push_back(&vt);
      for (int32_t i = 0; i < span.count; ++i) {
        plan.writes.Add(cache, in, span, h, i, kt, vt, base + i);
      }
      kernels::AttentionItem item =
          internal::ItemOf(internal::RowsOf(in, span, h, g), 0, span.count, row, kt.length, base);
      if (want_col_sums) {
        item.col_sums = col_sums + at;
        at += static_cast<size_t>(kt.length);
      }
      plan.items.push_back(item);
    }
  }
  plan.BuildViews(cache);

  // The run.
  internal::RotateSpans(in, g, backend);
  plan.writes.Run(cache, in, backend);
  if (want_col_sums) backend.Fill(col_sums, 0, col_sums_floats * sizeof(float));
  backend.Attention(plan.Batch(g));
  if (want_col_sums) {
    thread_local std::vector<float> tl_host;
    std::vector<float>& host = tl_host;
    host.resize(col_sums_floats);
    backend.Download(host.data(), col_sums, col_sums_floats * sizeof(float));
    at = 0;
    for (size_t s = 0; s < in.seqs.size(); ++s) {
      for (int32_t h = 0; h < n_kv; ++h) {
        const int32_t n = in.seqs[s].seq->k(in.layer, h).length;
        observer->OnColumnSums(s, h, host.data() + at, n);
        at += static_cast<size_t>(n);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvasir::kvcache
