// Best-fit range allocator (see range_allocator.h).
#include "cachestore/range_allocator.h"

#include "common/base/check.h"

namespace kvasir::cachestore {

RangeAllocator::RangeAllocator(uint64_t alignment) : alignment_(alignment) {
  KVASIR_CHECK(alignment_ > 0 && (alignment_ & (alignment_ - 1)) == 0);
}

uint32_t RangeAllocator::AddArena(uint64_t size) {
  const uint32_t arena = static_cast<uint32_t>(arena_sizes_.size());
  size &= ~(alignment_ - 1);
  arena_sizes_.push_back(size);
  capacity_ += size;
  if (size > 0) InsertFree(arena, 0, size);
  return arena;
}

void RangeAllocator::InsertFree(uint32_t arena, uint64_t offset, uint64_t size) {
  by_position_.emplace(std::make_pair(arena, offset), size);
  by_size_.emplace(size, arena, offset);
}

void RangeAllocator::EraseFree(std::map<std::pair<uint32_t, uint64_t>, uint64_t>::iterator it) {
  by_size_.erase(std::make_tuple(it->second, it->first.first, it->first.second));
  by_position_.erase(it);
}

std::optional<Allocation> RangeAllocator::Allocate(uint64_t size) {
  if (size == 0 || size > capacity_) return std::nullopt;
  const uint64_t rounded = Round(size);
  auto fit = by_size_.lower_bound(std::make_tuple(rounded, uint32_t{0}, uint64_t{0}));
  if (fit == by_size_.end()) return std::nullopt;
  const auto [free_size, arena, offset] = *fit;
  EraseFree(by_position_.find(std::make_pair(arena, offset)));
  if (free_size > rounded) InsertFree(arena, offset + rounded, free_size - rounded);
  used_ += rounded;
  return Allocation{arena, offset, size};
}

void RangeAllocator::Free(const Allocation& allocation) {
  KVASIR_CHECK(allocation.arena < arena_sizes_.size());
  uint64_t offset = allocation.offset;
  uint64_t size = Round(allocation.size);
  KVASIR_CHECK(offset + size <= arena_sizes_[allocation.arena] && used_ >= size);
  used_ -= size;
  // Merge with the free range that ends where this one starts, and the one that starts where it
  // ends (same arena only).
  auto next = by_position_.lower_bound(std::make_pair(allocation.arena, offset));
  if (next != by_position_.begin()) {
    auto prev = std::prev(next);
    if (prev->first.first == allocation.arena && prev->first.second + prev->second == offset) {
      offset = prev->first.second;
      size += prev->second;
      EraseFree(prev);
    }
  }
  next = by_position_.lower_bound(std::make_pair(allocation.arena, offset + size));
  if (next != by_position_.end() && next->first.first == allocation.arena &&
      next->first.second == offset + size) {
    size += next->second;
    EraseFree(next);
  }
  InsertFree(allocation.arena, offset, size);
}

uint64_t RangeAllocator::largest_free() const {
  return by_size_.empty() ? 0 : std::get<0>(*by_size_.rbegin());
}

}  // namespace kvasir::cachestore
