// PrefixSnapshots: the longest snapshot of a chain, least recently used first out beyond the
// capacity, a snapshot larger than the capacity not kept, replacing under the same hash.
#include "kvcache/prefix_snapshots.h"

#include "gtest/gtest.h"

namespace kvasir::kvcache {
namespace {

std::vector<std::string> Blocks(size_t bytes, char fill) { return {std::string(bytes, fill)}; }

TEST(PrefixSnapshotsTest, LongestLeastRecentlyUsedAndCapacity) {
  PrefixSnapshots s(300);
  const std::vector<uint64_t> chain = {11, 12, 13, 14};
  EXPECT_EQ(s.Longest(chain), -1);
  s.Put(11, Blocks(100, 'a'));
  s.Put(13, Blocks(100, 'c'));
  EXPECT_EQ(s.Longest(chain), 2);
  EXPECT_EQ(s.Longest(std::span<const uint64_t>(chain).first(2)), 0);
  EXPECT_EQ(s.bytes(), 200);
  ASSERT_NE(s.Get(11), nullptr);  // 11 is now the most recently used
  EXPECT_EQ((*s.Get(11))[0][0], 'a');
  s.Put(14, Blocks(150, 'd'));  // 350 > 300: 13, the least recently used, goes
  EXPECT_FALSE(s.Has(13));
  EXPECT_TRUE(s.Has(11) && s.Has(14));
  EXPECT_EQ(s.bytes(), 250);
  EXPECT_EQ(s.Longest(chain), 3);
  s.Put(14, Blocks(50, 'e'));  // replaced
  EXPECT_EQ(s.bytes(), 150);
  EXPECT_EQ((*s.Get(14))[0][0], 'e');
  s.Put(12, Blocks(301, 'x'));  // larger than the capacity: not kept, nothing else lost
  EXPECT_FALSE(s.Has(12));
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.Get(99), nullptr);
}

}  // namespace
}  // namespace kvasir::kvcache
