// Prefix reuse inside one KV cache: the pages of every whole block of tokens (page_size tokens,
// the prefix hash chain's block) that a sequence computed, kept under the hash chain of its
// tokens, so that a later sequence whose prompt starts the same way takes those pages (a page
// reference each, no copy) and computes only the rest. Pages stay in the pool while any sequence
// or the cache holds them; blocks that no sequence uses are given back least recently used
// first when the pool needs room (Evict).
//
// Only policies whose tables hold one slot per token, written once, can share blocks (full): a
// compressing policy's tables at a block boundary depend on what came after (eviction, merges,
// fusion), so its blocks are not kept (Shares() is false; such sequences reuse whole-sequence
// snapshots instead, kvcache/prefix_snapshots.h). The cache is the KvCache's reclaimer:
// when the pool runs out of pages, any allocation (a step, a restore) first evicts blocks.
//
//   PrefixCache::Chain chain;                        // per sequence, grows with it
//   int64_t hit = prefix.Attach(seq, prompt, salt, prompt.size() - 1, chain);
//   ... steps ...
//   prefix.Insert(seq, tokens, computed, salt, chain);  // its new whole blocks
//
// The salt (a tenant's) enters the chain: sequences with another salt never share a block.
// Every block kept or dropped is journaled (TakeEvents), so that a router elsewhere can keep an
// index of which worker holds which blocks from events rather than by asking; ChainOf computes
// the same hashes from a request's tokens.
// Thread contract: the owner of the KvCache (the engine's executor thread).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/codec.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

class PrefixCache {
 public:
  // The hash chain of one sequence's whole blocks, as far as it was computed.
  struct Chain {
    uint64_t salt = 0;
    std::vector<uint64_t> hashes;  // hashes[i]: blocks 0..i
  };

  // Becomes `cache`'s reclaimer (KvCache::set_reclaimer) until it goes.
  explicit PrefixCache(KvCache& cache);
  ~PrefixCache();  // gives back every page reference it holds
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // Whether sequences under `policy` can share blocks.
  static bool Shares(const KvPolicy& policy);
  static bool SharesSpec(std::string_view policy_spec) { return policy_spec == "full"; }
  // The hashes of the first `max_blocks` whole blocks of `tokens` (blocks of `block_tokens`), as
  // a cache keeps them for a sequence under the policy `policy_spec` and `salt`.
  static std::vector<uint64_t> ChainOf(std::span<const int32_t> tokens,
                                       std::string_view policy_spec, uint64_t salt,
                                       int32_t block_tokens, int64_t max_blocks);

  // The blocks kept and dropped since the last call, by hash (a block kept and dropped again in
  // between is in one list only: the one of its state now). After more changes than the journal
  // holds, or after Resync, `reset` is set and `added` lists every block kept now.
  struct Events {
    bool reset = false;
    std::vector<uint64_t> added;
    std::vector<uint64_t> removed;
    // Blocks written to a second tier (filled by the cache's owner, not by TakeEvents; a reset
    // does not drop them).
    std::vector<uint64_t> stored;
    // Applies `later` on top of these events.
    void Merge(Events later);
  };
  Events TakeEvents();
  void Resync() { resync_ = true; }

  // Makes the new, empty sequence `seq` share the longest run of cached blocks that starts
  // `tokens` under its policy and `salt`, at most `max_tokens` tokens; returns the tokens it now
  // holds (a multiple of the block size, 0 when nothing is cached or the policy does not share).
  // `chain` is reset and gets the hashes of the blocks taken.
  int64_t Attach(SequenceKv& seq, std::span<const int32_t> tokens, uint64_t salt,
                 int64_t max_tokens, Chain& chain);

  // Keeps the whole blocks among the first `n_tokens` of `tokens` (whose KV `seq` holds) that are
  // not cached yet. `chain` is the sequence's (from Attach) and is extended. Returns the indices
  // of the blocks it kept now (ascending; their hashes are chain.hashes[i]).
  std::vector<int64_t> Insert(const SequenceKv& seq, std::span<const int32_t> tokens,
                              int64_t n_tokens, Chain& chain);

  // How many of the blocks `hashes` (a chain, ChainOf) names, from the first on, are cached.
  int64_t CachedRun(std::span<const uint64_t> hashes) const;

  // A second tier elsewhere (the cachestore, worker/service/scheduler.h) keeps blocks one by one:
  // each as the codec snapshot of a sequence of its block_tokens() tokens alone, under the
  // policy `policy` (one that shares) and info.prefix_hash = the block's chain hash.
  // EncodeBlock: NotFound when the block is not cached.
  absl::StatusOr<std::vector<std::string>> EncodeBlock(uint64_t hash,
                                                       std::shared_ptr<const KvPolicy> policy,
                                                       SnapshotInfo info);
  // Keeps the block `hash` from such a snapshot (decoded and verified by the codec into pages
  // of its own). InvalidArgument when the snapshot is not one of that block; ResourceExhausted
  // without room. A block cached already is left as it is.
  absl::Status AdoptBlock(uint64_t hash, std::span<const std::string> blocks,
                          std::shared_ptr<const KvPolicy> policy, uint64_t model_fingerprint);

  // Drops blocks, least recently used first, until `pages` pages went back to the pool or no
  // block is left; returns the pages freed (a block still used by a sequence frees none). The
  // cache calls it when its pool is out of pages.
  int64_t Evict(int64_t pages);

  int64_t blocks() const { return static_cast<int64_t>(entries_.size()); }
  // Pages held by no sequence, only by the cache: what Evict can give back.
  int64_t UnusedPages() const;
  int32_t block_tokens() const { return cache_.pool().page_size(); }

 private:
  struct Entry {
    std::vector<int32_t> pages;  // per (layer, KV head): the K page, then the V page
    uint64_t last_use = 0;
  };
  void Touch(uint64_t hash, Entry& entry);
  // Keeps block `block` of `seq` under `hash` unless cached; true when kept now.
  bool Keep(uint64_t hash, const SequenceKv& seq, int64_t block);

  void Journal(uint64_t hash, bool kept);

  KvCache& cache_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  absl::flat_hash_map<uint64_t, bool> journal_;  // hash -> kept now
  bool resync_ = false;
  std::map<uint64_t, uint64_t> lru_;  // last_use -> hash
  uint64_t clock_ = 0;
};

}  // namespace kvasir::kvcache
