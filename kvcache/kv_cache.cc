#include "kvcache/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/base/half.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

namespace {

// n values of a pool of `dtype` (kF32 or kF16) as f32, and back.
void LoadF32(DType dtype, const void* src, int64_t n, float* out) {
  if (dtype == DType::kF32) {
    std::memcpy(out, src, sizeof(float) * n);
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) out[i] = Fp16ToFp32(h[i]);
}

void StoreF32(DType dtype, const float* src, int64_t n, void* out) {
  if (dtype == DType::kF32) {
    std::memcpy(out, src, sizeof(float) * n);
    return;
  }
  auto* h = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToFp16(src[i]);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const KvGeometry& g,
                                                         const KvCacheOptions& options) {
  if (g.n_layer <= 0 || g.n_head <= 0 || g.n_head_kv <= 0 || g.head_dim <= 0 ||
      g.n_head % g.n_head_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad KV geometry: layers ", g.n_layer,
                                                   ", heads ", g.n_head, ", kv heads ", g.n_head_kv,
                                                   ", head dim ", g.head_dim));
  }
  auto pool = PagePool::Create(options.page_size, g.head_dim, options.dtype, options.capacity_bytes,
                               options.memory);
  if (!pool.ok()) return pool.status();
  return std::unique_ptr<KvCache>(new KvCache(g, std::move(*pool)));
}

SequenceKv& KvCache::CreateSequence(std::shared_ptr<const KvPolicy> policy) {
  auto seq = std::make_unique<SequenceKv>();
  seq->id_ = next_id_++;
  seq->n_head_kv_ = geometry_.n_head_kv;
  seq->k_.resize(static_cast<size_t>(geometry_.n_layer) * geometry_.n_head_kv);
  seq->v_.resize(seq->k_.size());
  seq->state_ = policy->NewState(geometry_);
  seq->policy_ = std::move(policy);
  SequenceKv& ref = *seq;
  seqs_.emplace(ref.id_, std::move(seq));
  return ref;
}

void KvCache::FreeTable(HeadTable& table) {
  for (int32_t page : table.pages) pool_.Unref(page);
  table.pages.clear();
  table.length = 0;
}

void KvCache::FreeSequence(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  for (auto& t : it->second->k_) FreeTable(t);
  for (auto& t : it->second->v_) FreeTable(t);
  seqs_.erase(it);
}

SequenceKv* KvCache::Find(SeqId id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

std::optional<int32_t> KvCache::AllocatePage() {
  std::optional<int32_t> page = pool_.Allocate();
  if (!page && reclaimer_ && reclaimer_(1) > 0) page = pool_.Allocate();
  return page;
}

absl::Status KvCache::Reserve(HeadTable& table, int32_t slots, int32_t first_write) {
  const int32_t page_size = pool_.page_size();
  const int32_t pages_needed = (slots + page_size - 1) / page_size;
  // Copy-on-write: pages that will be written and are shared get a private copy.
  for (int32_t p = std::max(0, first_write) / page_size;
       p < static_cast<int32_t>(table.pages.size()) && p < pages_needed; ++p) {
    const int32_t page = table.pages[p];
    if (pool_.refcount(page) > 1) {
      std::optional<int32_t> copy = AllocatePage();
      if (!copy) return absl::ResourceExhaustedError("KV cache is full");
      if (pool_.host_addressable()) {
        std::memcpy(pool_.page_data(*copy), pool_.page_data(page), pool_.page_bytes());
      } else {
        pool_.backend()->Copy(pool_.page_data(*copy), pool_.page_data(page), pool_.page_bytes());
      }
      pool_.Unref(page);
      table.pages[p] = *copy;
    }
  }
  while (static_cast<int32_t>(table.pages.size()) < pages_needed) {
    std::optional<int32_t> page = AllocatePage();
    if (!page) return absl::ResourceExhaustedError("KV cache is full");
    table.pages.push_back(*page);
  }
  return absl::OkStatus();
}

void KvCache::Truncate(HeadTable& table, int32_t length) {
  KVASIR_CHECK(length >= 0 && length <= table.length);
  table.length = length;
  const int32_t page_size = pool_.page_size();
  const size_t keep = static_cast<size_t>((length + page_size - 1) / page_size);
  while (table.pages.size() > keep) {
    pool_.Unref(table.pages.back());
    table.pages.pop_back();
  }
}

void KvCache::WriteSlot(const HeadTable& table, int32_t slot, const float* values) {
  KVASIR_CHECK(pool_.host_addressable());
  StoreF32(pool_.dtype(), values, geometry_.head_dim, SlotPtr(table, slot));
}

void KvCache::ReadSlots(const HeadTable& table, int32_t first, int32_t n, float* out) const {
  const int64_t hd = geometry_.head_dim;
  std::vector<uint8_t> staging;
  ForEachPageRun(first, n, [&](int32_t s, int32_t run) {
    const void* src = SlotPtr(table, s);
    if (!pool_.host_addressable()) {  // GPU memory: through host memory
      staging.resize(static_cast<size_t>(run) * pool_.slot_bytes());
      pool_.backend()->Download(staging.data(), src, staging.size());
      src = staging.data();
    }
    LoadF32(pool_.dtype(), src, run * hd, out + (s - first) * hd);
  });
}

void KvCache::WriteSlots(const HeadTable& table, int32_t first, int32_t n, const float* values) {
  const int64_t hd = geometry_.head_dim;
  std::vector<uint8_t> staging;
  ForEachPageRun(first, n, [&](int32_t s, int32_t run) {
    const float* src = values + (s - first) * hd;
    if (pool_.host_addressable()) {
      StoreF32(pool_.dtype(), src, run * hd, SlotPtr(table, s));
      return;
    }
    staging.resize(static_cast<size_t>(run) * pool_.slot_bytes());  // GPU memory: through host
    StoreF32(pool_.dtype(), src, run * hd, staging.data());
    pool_.backend()->Upload(SlotPtr(table, s), staging.data(), staging.size());
  });
}

void KvCache::ReadSlot(const HeadTable& table, int32_t slot, float* values) const {
  KVASIR_CHECK(pool_.host_addressable());
  LoadF32(pool_.dtype(), SlotPtr(table, slot), geometry_.head_dim, values);
}

void KvCache::ShareTable(const HeadTable& src, int32_t slots, HeadTable& dst) {
  KVASIR_CHECK(slots <= src.length);
  FreeTable(dst);
  const int32_t page_size = pool_.page_size();
  const int32_t pages = (slots + page_size - 1) / page_size;
  for (int32_t p = 0; p < pages; ++p) {
    pool_.Ref(src.pages[p]);
    dst.pages.push_back(src.pages[p]);
  }
  dst.length = slots;
}

kernels::PagedKvView KvCache::BuildView(std::span<const HeadTable* const> tables,
                                        ViewStorage& storage) const {
  storage.indptr.resize(tables.size() + 1);
  storage.last_page_len.resize(tables.size());
  storage.indices.clear();
  storage.indptr[0] = 0;
  const int32_t page_size = pool_.page_size();
  for (size_t i = 0; i < tables.size(); ++i) {
    const HeadTable& t = *tables[i];
    const int32_t pages = (t.length + page_size - 1) / page_size;
    KVASIR_CHECK(pages <= static_cast<int32_t>(t.pages.size()));
    storage.indices.insert(storage.indices.end(), t.pages.begin(), t.pages.begin() + pages);
    storage.indptr[i + 1] = static_cast<int32_t>(storage.indices.size());
    storage.last_page_len[i] = pages == 0 ? 0 : t.length - (pages - 1) * page_size;
  }
  kernels::PagedKvView view;
  view.num_rows = static_cast<int32_t>(tables.size());
  view.indptr = storage.indptr.data();
  view.indices = storage.indices.data();
  view.last_page_len = storage.last_page_len.data();
  view.page_size = page_size;
  view.head_dim = pool_.head_dim();
  view.dtype = pool_.dtype();
  view.pool = pool_.base();
  return view;
}

KvUsage KvCache::Usage(const SequenceKv& seq) const {
  KvUsage u;
  u.tokens = seq.n_tokens_;
  int64_t pages = 0;
  for (const auto* tables : {&seq.k_, &seq.v_}) {
    for (const HeadTable& t : *tables) {
      u.slots += t.length;
      pages += static_cast<int64_t>(t.pages.size());
    }
  }
  u.full_slots = 2 * u.tokens * geometry_.n_layer * geometry_.n_head_kv;
  u.bytes = u.slots * static_cast<int64_t>(pool_.slot_bytes());
  u.full_bytes = u.full_slots * static_cast<int64_t>(pool_.slot_bytes());
  u.page_bytes = pages * static_cast<int64_t>(pool_.page_bytes());
  return u;
}

KvUsage KvCache::TotalUsage() const {
  KvUsage total;
  for (const auto& [id, seq] : seqs_) {
    KvUsage u = Usage(*seq);
    total.tokens += u.tokens;
    total.slots += u.slots;
    total.full_slots += u.full_slots;
    total.bytes += u.bytes;
    total.full_bytes += u.full_bytes;
  }
  total.page_bytes = static_cast<int64_t>(pool_.pages_used()) * pool_.page_bytes();
  return total;
}

}  // namespace kvasir::kvcache
