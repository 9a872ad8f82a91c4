// Placement of variable-size blocks inside the memory tier's arenas: best-fit over free ranges,
// with neighbours coalesced on free. Every byte of every arena is in exactly one free range or one
// allocation. Not thread-safe (the store's mutex guards it).
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

namespace kvasir::cachestore {

struct Allocation {
  uint32_t arena = 0;
  uint64_t offset = 0;  // within the arena
  uint64_t size = 0;    // as requested (the allocator rounds up internally)

  friend bool operator==(const Allocation&, const Allocation&) = default;
};

class RangeAllocator {
 public:
  // Allocations are rounded up to `alignment` (a power of two) and start at multiples of it.
  explicit RangeAllocator(uint64_t alignment = 64);

  // Adds an arena of `size` bytes (rounded down to the alignment); returns its index.
  uint32_t AddArena(uint64_t size);

  // The smallest free range that fits, or nullopt when none does (size 0 is refused).
  std::optional<Allocation> Allocate(uint64_t size);
  // Returns an allocation made by Allocate (not checked beyond a KVASIR_CHECK on the arena).
  void Free(const Allocation& allocation);

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }  // rounded bytes of live allocations
  // The largest allocation that would succeed now.
  uint64_t largest_free() const;
  size_t num_free_ranges() const { return by_position_.size(); }

 private:
  uint64_t Round(uint64_t size) const { return (size + alignment_ - 1) & ~(alignment_ - 1); }
  void InsertFree(uint32_t arena, uint64_t offset, uint64_t size);
  void EraseFree(std::map<std::pair<uint32_t, uint64_t>, uint64_t>::iterator it);

  uint64_t alignment_;
  uint64_t capacity_ = 0;
  uint64_t used_ = 0;
  std::vector<uint64_t> arena_sizes_;
  std::map<std::pair<uint32_t, uint64_t>, uint64_t> by_position_;  // (arena, offset) -> size
  std::set<std::tuple<uint64_t, uint32_t, uint64_t>> by_size_;     // (size, arena, offset)
};

}  // namespace kvasir::cachestore
