#include "cachestore/range_allocator.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvasir::cachestore {
namespace {

TEST(RangeAllocatorTest, BestFitAndCoalescing) {
  RangeAllocator a(64);
  a.AddArena(1024);
  auto x = a.Allocate(100);  // rounded to 128
  auto y = a.Allocate(64);
  auto z = a.Allocate(256);
  ASSERT_TRUE(x && y && z);
  EXPECT_EQ(x->offset, 0u);
  EXPECT_EQ(y->offset, 128u);
  EXPECT_EQ(z->offset, 192u);
  EXPECT_EQ(x->size, 100u) << "the requested size is kept";
  EXPECT_EQ(a.used(), 128u + 64 + 256);
  a.Free(*y);  // a 64-byte hole at 128
  // Best fit: a 64-byte request takes the hole, not the tail.
  auto w = a.Allocate(60);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->offset, 128u);
  a.Free(*w);
  a.Free(*x);  // merges with the hole: [0, 192)
  auto v = a.Allocate(192);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->offset, 0u);
  a.Free(*v);
  a.Free(*z);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.num_free_ranges(), 1u) << "everything merged back into one range";
  EXPECT_EQ(a.largest_free(), 1024u);
}

TEST(RangeAllocatorTest, ArenasDoNotMerge) {
  RangeAllocator a(64);
  a.AddArena(256);
  a.AddArena(256);
  EXPECT_EQ(a.capacity(), 512u);
  EXPECT_FALSE(a.Allocate(300)) << "no arena holds 300 bytes";
  auto x = a.Allocate(256);
  auto y = a.Allocate(256);
  ASSERT_TRUE(x && y);
  EXPECT_NE(x->arena, y->arena);
  EXPECT_FALSE(a.Allocate(1));
  a.Free(*x);
  a.Free(*y);
  EXPECT_EQ(a.num_free_ranges(), 2u);
  EXPECT_FALSE(a.Allocate(0)) << "empty allocations are refused";
}

// Random allocations and frees against a byte map: no overlap, everything inside its arena, and
// the free space adds up.
TEST(RangeAllocatorTest, RandomOpsNeverOverlap) {
  RangeAllocator a(64);
  const uint64_t sizes[] = {4096, 8192, 3000};
  std::vector<std::vector<int>> owner;
  for (uint64_t s : sizes) {
    a.AddArena(s);
    owner.emplace_back(s / 64 * 64, -1);
  }
  std::mt19937 rng(5);
  std::vector<std::pair<int, Allocation>> live;
  int next = 0;
  for (int step = 0; step < 5000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t size = 1 + rng() % 900;
      auto got = a.Allocate(size);
      if (!got) continue;
      ASSERT_LT(got->arena, owner.size());
      ASSERT_EQ(got->offset % 64, 0u);
      ASSERT_LE(got->offset + size, owner[got->arena].size());
      for (uint64_t b = got->offset; b < got->offset + size; ++b) {
        ASSERT_EQ(owner[got->arena][b], -1) << "overlap at step " << step;
        owner[got->arena][b] = next;
      }
      live.emplace_back(next++, *got);
    } else {
      const size_t i = rng() % live.size();
      const Allocation& x = live[i].second;
      for (uint64_t b = x.offset; b < x.offset + x.size; ++b) owner[x.arena][b] = -1;
      a.Free(x);
      live.erase(live.begin() + static_cast<long>(i));
    }
  }
  for (auto& [id, x] : live) a.Free(x);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.num_free_ranges(), 3u);
}

}  // namespace
}  // namespace kvasir::cachestore
