// Prefix reuse for the policies whose blocks cannot be shared page by page (the compressing
// ones, PrefixCache::Shares false: their tables at a block boundary depend on the tokens after
// it). Where a prefill step ends on a block boundary, the whole sequence is encoded with the
// block codec (tables and policy state) and kept under the hash of the tokens so far (the
// prefix cache's chain, salted by the policy spec and the tenant); a later request whose prompt
// starts with those tokens restores the longest such snapshot into a sequence of its own and
// prefills only the rest. Every policy's prefill gives the same bits however it is chunked (each
// policy's tests), and the codec restores a sequence bit for bit, so the output equals a cold
// run's. A compressed snapshot is small (the policy's bound, not the prompt): the store keeps
// them in memory up to `capacity_bytes`, least recently used first out.
//
//   PrefixSnapshots snaps(64 << 20);
//   snaps.Put(chain[b], std::move(blocks));          // after a step that ended at (b + 1) blocks
//   const int64_t b = snaps.Longest(chain);          // at admission: -1, or the block index
//   auto seq = DecodeSequence(cache, *snaps.Get(chain[b]), policy, fingerprint);
//
// Thread contract: one thread (the scheduler's executor).
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvasir::kvcache {

class PrefixSnapshots {
 public:
  explicit PrefixSnapshots(int64_t capacity_bytes) : capacity_(capacity_bytes) {}

  // Keeps the encoded blocks of a snapshot under `hash` (replacing one kept there), then gives
  // back the least recently used snapshots beyond the capacity (a snapshot larger than the
  // capacity is not kept).
  void Put(uint64_t hash, std::vector<std::string> blocks);
  // The largest i with a snapshot under chain[i], or -1.
  int64_t Longest(std::span<const uint64_t> chain) const;
  // The snapshot under `hash` (null if none), now the most recently used.
  const std::vector<std::string>* Get(uint64_t hash);
  bool Has(uint64_t hash) const { return entries_.contains(hash); }

  int64_t bytes() const { return bytes_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::vector<std::string> blocks;
    int64_t bytes = 0;
    std::list<uint64_t>::iterator lru;  // in lru_
  };
  int64_t capacity_;
  int64_t bytes_ = 0;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // most recently used first
};

}  // namespace kvasir::kvcache
