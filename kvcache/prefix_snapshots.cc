// PrefixSnapshots (see prefix_snapshots.h).
#include "kvcache/prefix_snapshots.h"

namespace kvasir::kvcache {

void PrefixSnapshots::Put(uint64_t hash, std::vector<std::string> blocks) {
  if (auto it = entries_.find(hash); it != entries_.end()) {
    bytes_ -= it->second.bytes;
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
  int64_t size = 0;
  for (const std::string& b : blocks) size += static_cast<int64_t>(b.size());
  if (size > capacity_) return;
  lru_.push_front(hash);
  entries_[hash] = Entry{std::move(blocks), size, lru_.begin()};
  bytes_ += size;
  while (bytes_ > capacity_) {
    auto victim = entries_.find(lru_.back());
    bytes_ -= victim->second.bytes;
    entries_.erase(victim);
    lru_.pop_back();
  }
}

int64_t PrefixSnapshots::Longest(std::span<const uint64_t> chain) const {
  for (int64_t i = static_cast<int64_t>(chain.size()) - 1; i >= 0; --i) {
    if (entries_.contains(chain[i])) return i;
  }
  return -1;
}

const std::vector<std::string>* PrefixSnapshots::Get(uint64_t hash) {
  auto it = entries_.find(hash);
  if (it == entries_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return &it->second.blocks;
}

}  // namespace kvasir::kvcache
