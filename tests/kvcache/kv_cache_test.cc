#include "kvcache/kv_cache.h"

#include <vector>

#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {
namespace {

KvGeometry SmallGeometry() {
  KvGeometry g;
  g.n_layer = 2;
  g.n_head = 4;
  g.n_head_kv = 2;
  g.head_dim = 8;
  g.n_rot = 8;
  return g;
}

std::vector<float> Slot(float base, int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = base + i;
  return v;
}

TEST(PagePoolTest, AllocatesUntilFullAndReusesFreedPages) {
  auto pool = PagePool::Create(/*page_size=*/4, /*head_dim=*/8, DType::kF32, 3 * 4 * 8 * 4);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->capacity_pages(), 3);
  auto a = pool->Allocate(), b = pool->Allocate(), c = pool->Allocate();
  ASSERT_TRUE(a && b && c);
  EXPECT_FALSE(pool->Allocate().has_value());
  EXPECT_EQ(pool->pages_free(), 0);
  pool->Ref(*b);
  pool->Unref(*b);
  EXPECT_EQ(pool->pages_free(), 0) << "still referenced once";
  pool->Unref(*b);
  EXPECT_EQ(pool->pages_free(), 1);
  auto d = pool->Allocate();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(*d, *b);
}

TEST(PagePoolTest, RejectsBadSizes) {
  EXPECT_FALSE(PagePool::Create(0, 8, DType::kF32, 1 << 20).ok());
  EXPECT_FALSE(PagePool::Create(16, 8, DType::kQ4_0, 1 << 20).ok());
  EXPECT_FALSE(PagePool::Create(16, 8, DType::kF32, 10).ok()) << "less than one page";
}

TEST(KvCacheTest, TablesGrowPerHeadAndAccountExactly) {
  KvCacheOptions o;
  o.page_size = 4;
  o.capacity_bytes = 64 * 4 * 8 * 4;
  auto cache = KvCache::Create(SmallGeometry(), o);
  ASSERT_TRUE(cache.ok()) << cache.status();
  KvCache& c = **cache;
  SequenceKv& seq = c.CreateSequence(std::make_shared<FullPolicy>());
  // Different lengths per (layer, head), and K different from V.
  HeadTable& k00 = seq.k(0, 0);
  ASSERT_TRUE(c.Reserve(k00, 9, 0).ok());
  EXPECT_EQ(k00.pages.size(), 3u);
  for (int s = 0; s < 9; ++s) {
    k00.length = s + 1;
    c.WriteSlot(k00, s, Slot(100.0f * s, 8).data());
  }
  HeadTable& v11 = seq.v(1, 1);
  ASSERT_TRUE(c.Reserve(v11, 2, 0).ok());
  v11.length = 2;
  seq.set_n_tokens(9);
  std::vector<float> out(8);
  c.ReadSlot(k00, 6, out.data());
  EXPECT_EQ(out, Slot(600.0f, 8));

  const KvUsage u = c.Usage(seq);
  EXPECT_EQ(u.slots, 11);
  EXPECT_EQ(u.full_slots, 2 * 9 * 2 * 2);
  EXPECT_EQ(u.bytes, 11 * 8 * 4);
  EXPECT_EQ(u.full_bytes, 72 * 8 * 4);
  EXPECT_EQ(u.page_bytes, 4 * (4 * 8 * 4));
  EXPECT_NEAR(u.ratio(), 11.0 / 72.0, 1e-12);

  c.Truncate(k00, 5);
  EXPECT_EQ(k00.pages.size(), 2u);
  const int used = c.pool().pages_used();
  c.FreeSequence(seq.id());
  EXPECT_EQ(c.pool().pages_used(), used - 3);
  EXPECT_EQ(c.pool().pages_used(), 0);
}

TEST(KvCacheTest, SharedPagesAreCopiedBeforeTheyAreWritten) {
  KvCacheOptions o;
  o.page_size = 4;
  o.capacity_bytes = 16 * 4 * 8 * 4;
  auto cache = KvCache::Create(SmallGeometry(), o);
  ASSERT_TRUE(cache.ok());
  KvCache& c = **cache;
  auto policy = std::make_shared<FullPolicy>();
  SequenceKv& a = c.CreateSequence(policy);
  HeadTable& ta = a.k(0, 0);
  ASSERT_TRUE(c.Reserve(ta, 6, 0).ok());
  ta.length = 6;
  for (int s = 0; s < 6; ++s) c.WriteSlot(ta, s, Slot(s, 8).data());

  SequenceKv& b = c.CreateSequence(policy);
  HeadTable& tb = b.k(0, 0);
  c.ShareTable(ta, 6, tb);
  EXPECT_EQ(tb.pages, ta.pages);
  EXPECT_EQ(c.pool().refcount(ta.pages[0]), 2);
  // b writes slot 6 (in the shared, partially filled second page): that page is copied, the
  // first full page stays shared.
  ASSERT_TRUE(c.Reserve(tb, 7, 6).ok());
  EXPECT_EQ(tb.pages[0], ta.pages[0]);
  EXPECT_NE(tb.pages[1], ta.pages[1]);
  tb.length = 7;
  c.WriteSlot(tb, 6, Slot(-1, 8).data());
  c.WriteSlot(tb, 5, Slot(-5, 8).data());
  std::vector<float> out(8);
  c.ReadSlot(ta, 5, out.data());
  EXPECT_EQ(out, Slot(5, 8)) << "a's page must not see b's write";
  c.ReadSlot(tb, 4, out.data());
  EXPECT_EQ(out, Slot(4, 8)) << "the copy keeps the shared contents";
  c.FreeSequence(a.id());
  c.FreeSequence(b.id());
  EXPECT_EQ(c.pool().pages_used(), 0);
}

TEST(KvCacheTest, ReserveFailsCleanlyWhenFull) {
  KvCacheOptions o;
  o.page_size = 4;
  o.capacity_bytes = 2 * 4 * 8 * 4;  // two pages
  auto cache = KvCache::Create(SmallGeometry(), o);
  ASSERT_TRUE(cache.ok());
  SequenceKv& s = (*cache)->CreateSequence(std::make_shared<FullPolicy>());
  absl::Status st = (*cache)->Reserve(s.k(0, 0), 12, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  (*cache)->FreeSequence(s.id());
  EXPECT_EQ((*cache)->pool().pages_used(), 0);
}

TEST(KvCacheTest, CsrViewAddressesEverySlot) {
  KvCacheOptions o;
  o.page_size = 3;
  o.capacity_bytes = 32 * 3 * 8 * 4;
  auto cache = KvCache::Create(SmallGeometry(), o);
  ASSERT_TRUE(cache.ok());
  KvCache& c = **cache;
  SequenceKv& s = c.CreateSequence(std::make_shared<FullPolicy>());
  std::vector<const HeadTable*> rows;
  const int lengths[] = {0, 1, 3, 7};
  for (int r = 0; r < 4; ++r) {
    HeadTable& t = r < 2 ? s.k(r, 0) : s.v(r - 2, 1);
    ASSERT_TRUE(c.Reserve(t, lengths[r], 0).ok());
    t.length = lengths[r];
    for (int i = 0; i < lengths[r]; ++i) c.WriteSlot(t, i, Slot(1000.0f * r + 10 * i, 8).data());
    rows.push_back(&t);
  }
  KvCache::ViewStorage storage;
  kernels::PagedKvView view = c.BuildView(rows, storage);
  ASSERT_EQ(view.num_rows, 4);
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(view.length(r), lengths[r]);
    for (int i = 0; i < lengths[r]; ++i) {
      const float* p = reinterpret_cast<const float*>(static_cast<const uint8_t*>(view.pool) +
                                                      view.slot_offset_bytes(r, i));
      EXPECT_EQ(p[0], 1000.0f * r + 10 * i);
      EXPECT_EQ(p[7], 1000.0f * r + 10 * i + 7);
    }
  }
}

TEST(PolicyTest, ParsesFullAndRejectsUnknown) {
  auto full = ParsePolicy("full", SmallGeometry());
  ASSERT_TRUE(full.ok());
  EXPECT_EQ((*full)->spec(), "full");
  EXPECT_FALSE(ParsePolicy("full:x=1", SmallGeometry()).ok());
  auto bad = ParsePolicy("quantum", SmallGeometry());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("quantum"), absl::string_view::npos);
}

}  // namespace
}  // namespace kvasir::kvcache
