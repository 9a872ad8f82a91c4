// The compression-aware paged KV cache. Every (sequence, layer, KV head) has its own block table
// for K and its own for V (HeadTable), so lengths can differ per head and K can differ from V.
// Tables index pages of one PagePool. What a policy stores in them, and how attention reads them,
// is the policy's business (kvcache/policy.h); this class owns the memory and the bookkeeping:
// sequences, page allocation, copy-on-write of shared pages, the CSR views the kernels read, and
// exact accounting of what is held against what a full cache would hold.
//
// Thread contract: owned by one thread (the engine's executor). Policies may write slots of
// different tables from several threads of a parallel loop, but allocate only from the owner.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/base/dtype.h"
#include "kernels/types.h"
#include "kvcache/page_pool.h"

namespace kvasir::kvcache {

class KvPolicy;
class KvCache;

// Shape of the attention the cache serves, and the RoPE applied to keys.
struct KvGeometry {
  int32_t n_layer = 0;
  int32_t n_head = 0;     // query heads
  int32_t n_head_kv = 0;  // KV heads
  int32_t head_dim = 0;
  int32_t n_rot = 0;  // rotated elements per head
  float rope_base = 10000.0f;
  float rope_scale = 1.0f;  // positions are divided by it (linear scaling)
  kernels::RopeLayout rope_layout = kernels::RopeLayout::kAdjacentPairs;
  // A tensor-parallel rank's cache holds the model's KV heads [kv_head_offset, kv_head_offset +
  // n_head_kv) of model_n_head_kv (0: every head, one process); policy files written for the
  // whole model (PoD groups) are sliced by it.
  int32_t kv_head_offset = 0;
  int32_t model_n_head_kv = 0;

  int32_t group() const { return n_head / n_head_kv; }
  int32_t model_kv_heads() const { return model_n_head_kv > 0 ? model_n_head_kv : n_head_kv; }
};

// Slots of one (sequence, layer, KV head), for K or for V.
struct HeadTable {
  std::vector<int32_t> pages;  // page ids, in slot order
  int32_t length = 0;          // slots in use
};

// A policy's per-sequence state beyond the tables (DMC accumulators, H2O scores, ...).
class PolicyState {
 public:
  virtual ~PolicyState() = default;
};

using SeqId = int64_t;

// Everything the cache holds for one sequence.
class SequenceKv {
 public:
  SeqId id() const { return id_; }
  const KvPolicy& policy() const { return *policy_; }
  std::shared_ptr<const KvPolicy> policy_ptr() const { return policy_; }
  // Tokens consumed so far: the position of the next token.
  int64_t n_tokens() const { return n_tokens_; }
  void set_n_tokens(int64_t n) { n_tokens_ = n; }

  HeadTable& k(int32_t layer, int32_t head) { return k_[layer * n_head_kv_ + head]; }
  HeadTable& v(int32_t layer, int32_t head) { return v_[layer * n_head_kv_ + head]; }
  const HeadTable& k(int32_t layer, int32_t head) const { return k_[layer * n_head_kv_ + head]; }
  const HeadTable& v(int32_t layer, int32_t head) const { return v_[layer * n_head_kv_ + head]; }
  PolicyState* state() { return state_.get(); }
  const PolicyState* state() const { return state_.get(); }

 private:
  friend class KvCache;
  SeqId id_ = 0;
  int32_t n_head_kv_ = 0;
  int64_t n_tokens_ = 0;
  std::shared_ptr<const KvPolicy> policy_;
  std::vector<HeadTable> k_;  // [n_layer * n_head_kv]
  std::vector<HeadTable> v_;
  std::unique_ptr<PolicyState> state_;
};

// Memory held by one sequence (or all), exactly.
struct KvUsage {
  int64_t tokens = 0;      // tokens consumed
  int64_t slots = 0;       // K slots + V slots in use
  int64_t full_slots = 0;  // what a full cache would hold: 2 * tokens * layers * kv heads
  int64_t bytes = 0;       // slots * slot bytes
  int64_t full_bytes = 0;  // full_slots * slot bytes
  int64_t page_bytes = 0;  // pages referenced * page bytes (with page rounding)
  double ratio() const { return full_bytes > 0 ? static_cast<double>(bytes) / full_bytes : 1.0; }
};

struct KvCacheOptions {
  int32_t page_size = 16;     // slots per page
  DType dtype = DType::kF32;  // kF32 or kF16
  int64_t capacity_bytes = 256 << 20;
  // Where the pages live: null, a host mapping; else this backend's memory (GPU memory for CUDA),
  // which the policies and the codec then reach through the backend. Borrowed.
  kernels::Backend* memory = nullptr;
};

class KvCache {
 public:
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const KvGeometry& geometry,
                                                         const KvCacheOptions& options);

  const KvGeometry& geometry() const { return geometry_; }
  PagePool& pool() { return pool_; }
  const PagePool& pool() const { return pool_; }

  // A new empty sequence under `policy`.
  SequenceKv& CreateSequence(std::shared_ptr<const KvPolicy> policy);
  // Frees the sequence's pages (shared pages only lose a reference). No-op for unknown ids.
  void FreeSequence(SeqId id);
  SequenceKv* Find(SeqId id);
  size_t num_sequences() const { return seqs_.size(); }

  // Allocates pages so that `table` can hold `slots` slots, and makes every page that will be
  // written from slot `first_write` on private (copy-on-write of shared pages). ResourceExhausted
  // when the pool is full and the reclaimer frees nothing (what was allocated stays allocated and
  // is freed with the sequence).
  absl::Status Reserve(HeadTable& table, int32_t slots, int32_t first_write);
  // Called when the pool is out of pages, before Reserve gives up: it gives some back (the
  // prefix cache's unused blocks, kvcache/prefix_cache.h) and returns how many. Empty: none.
  void set_reclaimer(std::function<int64_t(int64_t pages)> reclaimer) {
    reclaimer_ = std::move(reclaimer);
  }
  // Drops slots beyond `length`, and pages that become empty.
  void Truncate(HeadTable& table, int32_t length);
  // Pointer to a slot of a table (which must hold the page).
  void* SlotPtr(const HeadTable& table, int32_t slot) {
    return pool_.slot_data(table.pages[slot / pool_.page_size()], slot % pool_.page_size());
  }
  const void* SlotPtr(const HeadTable& table, int32_t slot) const {
    return const_cast<KvCache*>(this)->SlotPtr(table, slot);
  }
  // Copies f32 values into a slot, converting to the pool's dtype. Host-addressable pools only.
  void WriteSlot(const HeadTable& table, int32_t slot, const float* values);
  // Calls fn(slot, count) for the runs of slots [first, first + n) of a table that are
  // contiguous in the pool (one run per page).
  template <typename F>
  void ForEachPageRun(int32_t first, int32_t n, F&& fn) const {
    const int32_t page = pool_.page_size();
    for (int32_t s = first; s < first + n;) {
      const int32_t run = std::min(page - s % page, first + n - s);
      fn(s, run);
      s += run;
    }
  }
  // Slots [first, first + n) of a table as f32 (out: [n, head_dim]) and back, on either kind of
  // pool: on a pool in a backend's memory, page run by page run through host memory (a copy
  // each way, waited for).
  void ReadSlots(const HeadTable& table, int32_t first, int32_t n, float* out) const;
  void WriteSlots(const HeadTable& table, int32_t first, int32_t n, const float* values);
  // Reads a slot as f32. Host-addressable pools only.
  void ReadSlot(const HeadTable& table, int32_t slot, float* values) const;

  // Makes `dst` share the first `slots` slots of `src` (prefix sharing): whole pages are
  // referenced, and the partial last page too; a later write into it is copied first.
  void ShareTable(const HeadTable& src, int32_t slots, HeadTable& dst);

  // CSR view over `tables` (row i = tables[i]). The arrays live in `storage`, which must outlive
  // the view and is reused between calls.
  struct ViewStorage {
    std::vector<int32_t> indptr, indices, last_page_len;
  };
  kernels::PagedKvView BuildView(std::span<const HeadTable* const> tables,
                                 ViewStorage& storage) const;

  KvUsage Usage(const SequenceKv& seq) const;
  KvUsage TotalUsage() const;

 private:
  KvCache(const KvGeometry& geometry, PagePool pool)
      : geometry_(geometry), pool_(std::move(pool)) {}
  void FreeTable(HeadTable& table);
  // A page from the pool, after asking the reclaimer for one when the pool is empty.
  std::optional<int32_t> AllocatePage();

  KvGeometry geometry_;
  PagePool pool_;
  std::function<int64_t(int64_t pages)> reclaimer_;
  SeqId next_id_ = 1;
  absl::flat_hash_map<SeqId, std::unique_ptr<SequenceKv>> seqs_;
};

}  // namespace kvasir::kvcache
