// The CUDA Attention operation on the host: checks the batch, builds the plan of
// attention_plan.h (compact page lists, tiles, splits, col units), stages it and launches.
#include "kernels/cuda/attention_plan.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "common/base/check.h"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

using namespace attention;  // NOLINT: the plan's records and constants

// Host-side checks of one item, as the CPU's CheckArgs.
void CheckItem(const AttentionBatch& b, const AttentionItem& a) {
  KVASIR_CHECK(a.n_q >= 0 && a.n_keys >= 0);
  KVASIR_CHECK(a.n_q == 0 || (a.q != nullptr && a.out != nullptr));
  KVASIR_CHECK(static_cast<int64_t>(a.n_q) * b.group <= INT_MAX);
  if (a.n_keys == 0) return;
  KVASIR_CHECK(a.k_row >= 0 && a.k_row < b.k.num_rows && a.v_row >= 0 && a.v_row < b.v.num_rows);
  KVASIR_CHECK(a.k_begin >= 0 && static_cast<int64_t>(a.k_begin) + a.n_keys <= b.k.length(a.k_row));
  KVASIR_CHECK(a.v_begin >= 0 && static_cast<int64_t>(a.v_begin) + a.n_keys <= b.v.length(a.v_row));
}

// Appends the pages of `view` row `row` holding slots [begin, begin + n) to `pages`; returns the
// index of the first and sets *off to the slot of `begin` in it.
int32_t AddPages(const PagedKvView& view, int32_t row, int32_t begin, int32_t n,
                 std::vector<int32_t>& pages, int32_t* off) {
  const int32_t first = static_cast<int32_t>(pages.size());
  *off = 0;
  if (n == 0) return first;
  *off = begin % view.page_size;
  const int32_t p0 = begin / view.page_size, p1 = (begin + n - 1) / view.page_size;
  for (int32_t pg = p0; pg <= p1; ++pg) pages.push_back(view.indices[view.indptr[row] + pg]);
  return first;
}

}  // namespace

cudaError_t Attention(CudaContext& ctx, const AttentionBatch& b) {
  KVASIR_CHECK(b.group >= 1 && b.head_dim >= 1);
  KVASIR_CHECK_MSG(b.head_dim <= kMaxHeadDim, "CUDA Attention: head_dim above 256");
  KVASIR_CHECK(b.k.head_dim == b.head_dim && b.v.head_dim == b.head_dim);
  KVASIR_CHECK(b.k.dtype == DType::kF32 || b.k.dtype == DType::kF16);
  KVASIR_CHECK(b.v.dtype == DType::kF32 || b.v.dtype == DType::kF16);
  if (b.items.empty()) return cudaGetLastError();

  thread_local std::vector<ItemPlan> items;
  thread_local std::vector<WorkUnit> units;
  thread_local std::vector<MergeUnit> merges;
  thread_local std::vector<ColUnit> cols;
  thread_local std::vector<int32_t> pages;
  items.clear();
  units.clear();
  merges.clear();
  cols.clear();
  pages.clear();
  int64_t total_tiles = 0;
  for (const AttentionItem& a : b.items) {
    total_tiles += (static_cast<int64_t>(a.n_q) * b.group + kTileRows - 1) / kTileRows;
  }
  // Splitting: up to this many blocks per single-tile item, aiming at two blocks per SM.
  const int64_t want_splits =
      std::max<int64_t>(1, 2 * ctx.num_sms / std::max<int64_t>(1, total_tiles));
  int32_t lse_rows = 0, partials = 0;
  for (const AttentionItem& a : b.items) {
    CheckItem(b, a);
    if (a.n_keys > 0) KVASIR_CHECK(b.k.page_size > 0 && b.v.page_size > 0);
    const int32_t index = static_cast<int32_t>(items.size());
    const int32_t rows = a.n_q * b.group;
    ItemPlan ip{};
    ip.q = a.q;
    ip.out = a.out;
    ip.lse = a.lse;
    ip.col_sums = rows > 0 ? a.col_sums : nullptr;
    ip.q_stride = a.q_token_stride;
    ip.out_stride = a.out_token_stride;
    ip.n_q = a.n_q;
    ip.n_keys = a.n_keys;
    ip.causal_base = a.causal_base;
    ip.k_page0 = AddPages(b.k, a.k_row, a.k_begin, a.n_keys, pages, &ip.k_off);
    ip.v_page0 = AddPages(b.v, a.v_row, a.v_begin, a.n_keys, pages, &ip.v_off);
    ip.lse_base = -1;
    if (ip.col_sums != nullptr) {
      ip.lse_base = lse_rows;
      lse_rows += rows;
      for (int32_t key0 = 0; key0 < a.n_keys; key0 += kChunk) cols.push_back({index, key0});
    }
    items.push_back(ip);
    if (rows == 0) continue;
    const int32_t tiles = (rows + kTileRows - 1) / kTileRows;
    const int32_t keys = Visible(ip, a.n_q - 1);
    int64_t splits = 1;
    if (tiles == 1) {
      splits = std::min<int64_t>(want_splits, (keys + kMinSplitKeys - 1) / kMinSplitKeys);
    }
    if (splits > 1) {
      const int32_t span =
          static_cast<int32_t>((keys + splits - 1) / splits + kChunk - 1) / kChunk * kChunk;
      splits = (keys + span - 1) / span;
      merges.push_back({index, rows, partials, static_cast<int32_t>(splits)});
      for (int32_t s = 0; s < splits; ++s) {
        units.push_back({index, 0, rows, s * span, std::min(keys, (s + 1) * span), partials + s});
      }
      partials += static_cast<int32_t>(splits);
    } else {
      for (int32_t t = 0; t < tiles; ++t) {
        units.push_back(
            {index, t * kTileRows, std::min(kTileRows, rows - t * kTileRows), 0, a.n_keys, -1});
      }
    }
  }
  if (units.empty() && cols.empty()) return cudaGetLastError();

  Staging& st = *ctx.staging;
  st.Begin();
  const size_t items_at = st.Add(items), units_at = st.Add(units), merges_at = st.Add(merges);
  const size_t cols_at = st.Add(cols), pages_at = st.Add(pages);
  st.Commit();
  const int32_t hd = b.head_dim;
  const size_t part_out_floats = static_cast<size_t>(partials) * kTileRows * hd;
  const size_t part_lse_floats = static_cast<size_t>(partials) * kTileRows;
  auto* scratch = static_cast<float*>(
      st.Scratch(sizeof(float) * (part_out_floats + part_lse_floats + lse_rows) + 64));
  Params p{};
  p.items = st.Device<ItemPlan>(items_at);
  p.units = st.Device<WorkUnit>(units_at);
  p.merges = st.Device<MergeUnit>(merges_at);
  p.cols = st.Device<ColUnit>(cols_at);
  p.pages = st.Device<int32_t>(pages_at);
  p.k_pool = b.k.pool;
  p.v_pool = b.v.pool;
  p.k_f16 = b.k.dtype == DType::kF16;
  p.v_f16 = b.v.dtype == DType::kF16;
  p.k_page_size = b.k.page_size;
  p.v_page_size = b.v.page_size;
  p.group = b.group;
  p.head_dim = hd;
  p.scale = b.scale;
  p.part_out = scratch;
  p.part_lse = scratch + part_out_floats;
  p.lse_all = scratch + part_out_floats + part_lse_floats;

  return Launch(p, static_cast<int64_t>(units.size()), static_cast<int64_t>(merges.size()),
                static_cast<int64_t>(cols.size()), ctx.stream);
}

}  // namespace kvasir::kernels::cuda
