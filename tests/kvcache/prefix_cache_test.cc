// PrefixCache: whole blocks kept under the salted hash chain of their tokens, shared (same
// pages, no copy) by a sequence whose tokens start alike, given back least recently used first;
// nothing for another salt, another tail, or a policy that cannot share.
#include "kvcache/prefix_cache.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "kvcache/streaming_policy.h"

namespace kvasir::kvcache {
namespace {

class PrefixCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_.n_layer = 2;
    g_.n_head = 2;
    g_.n_head_kv = 1;
    g_.head_dim = 4;
    g_.n_rot = 4;
    KvCacheOptions o;
    o.page_size = 4;
    o.capacity_bytes = 64 * 4 * 4 * 4;  // 64 pages
    cache_ = *KvCache::Create(g_, o);
    full_ = std::make_shared<FullPolicy>();
    for (int i = 0; i < 14; ++i) tokens_.push_back(100 + i);
  }

  // A full-policy sequence of `tokens`, each slot holding its token id.
  SequenceKv& Filled(std::span<const int32_t> tokens) {
    SequenceKv& seq = cache_->CreateSequence(full_);
    const int32_t n = static_cast<int32_t>(tokens.size());
    for (int32_t l = 0; l < g_.n_layer; ++l) {
      for (HeadTable* t : {&seq.k(l, 0), &seq.v(l, 0)}) {
        EXPECT_TRUE(cache_->Reserve(*t, n, 0).ok());
        t->length = n;
        for (int32_t s = 0; s < n; ++s) {
          const float v[4] = {float(tokens[s]), float(l), t == &seq.k(l, 0) ? 1.f : 2.f, 0};
          cache_->WriteSlot(*t, s, v);
        }
      }
    }
    seq.set_n_tokens(n);
    return seq;
  }

  KvGeometry g_;
  std::unique_ptr<KvCache> cache_;
  std::shared_ptr<FullPolicy> full_;
  std::vector<int32_t> tokens_;
};

TEST_F(PrefixCacheTest, SharesTheLongestCachedRunOfWholeBlocks) {
  PrefixCache prefix(*cache_);
  SequenceKv& a = Filled(tokens_);  // 14 tokens: 3 whole blocks of 4
  PrefixCache::Chain chain_a;
  prefix.Insert(a, tokens_, 14, chain_a);
  EXPECT_EQ(prefix.blocks(), 3);
  EXPECT_EQ(chain_a.hashes.size(), 3u);
  // A router computes the same chain from the tokens alone.
  EXPECT_EQ(PrefixCache::ChainOf(tokens_, "full", 0, 4, 100), chain_a.hashes);
  EXPECT_EQ(PrefixCache::ChainOf(tokens_, "full", 0, 4, 2).size(), 2u);
  EXPECT_NE(PrefixCache::ChainOf(tokens_, "full", 9, 4, 3), chain_a.hashes);
  // Its events: the three blocks kept.
  PrefixCache::Events events = prefix.TakeEvents();
  EXPECT_FALSE(events.reset);
  EXPECT_EQ(events.added.size(), 3u);
  EXPECT_TRUE(events.removed.empty());
  EXPECT_TRUE(prefix.TakeEvents().added.empty());

  // The same tokens: at most max_tokens (13) -> 3 blocks, the same pages, the same values.
  SequenceKv& b = cache_->CreateSequence(full_);
  PrefixCache::Chain chain_b;
  EXPECT_EQ(prefix.Attach(b, tokens_, 0, 13, chain_b), 12);
  EXPECT_EQ(b.n_tokens(), 12);
  for (int32_t l = 0; l < g_.n_layer; ++l) {
    EXPECT_EQ(b.k(l, 0).length, 12);
    EXPECT_EQ(std::vector<int32_t>(b.k(l, 0).pages.begin(), b.k(l, 0).pages.end()),
              std::vector<int32_t>(a.k(l, 0).pages.begin(), a.k(l, 0).pages.begin() + 3));
    float v[4];
    cache_->ReadSlot(b.v(l, 0), 9, v);
    EXPECT_EQ(v[0], 109);
    EXPECT_EQ(v[2], 2);
  }
  // A tail that differs in block 1: only block 0. max_tokens caps the blocks too.
  std::vector<int32_t> other = tokens_;
  other[5] = 7;
  SequenceKv& c = cache_->CreateSequence(full_);
  PrefixCache::Chain chain_c;
  EXPECT_EQ(prefix.Attach(c, other, 0, 13, chain_c), 4);
  SequenceKv& d = cache_->CreateSequence(full_);
  PrefixCache::Chain chain_d;
  EXPECT_EQ(prefix.Attach(d, tokens_, 0, 7, chain_d), 4);
  // Another salt (tenant) or a policy that does not share: nothing.
  SequenceKv& e = cache_->CreateSequence(full_);
  PrefixCache::Chain chain_e;
  EXPECT_EQ(prefix.Attach(e, tokens_, 42, 13, chain_e), 0);
  auto streaming = std::make_shared<StreamingPolicy>(1, 3);
  SequenceKv& f = cache_->CreateSequence(streaming);
  PrefixCache::Chain chain_f;
  EXPECT_EQ(prefix.Attach(f, tokens_, 0, 13, chain_f), 0);
  EXPECT_FALSE(PrefixCache::Shares(*streaming));

  // c goes on from its block 0 with a block of its own; Insert keeps its new whole blocks.
  const int64_t pages_before = cache_->pool().pages_used();
  for (int32_t l = 0; l < g_.n_layer; ++l) {
    for (HeadTable* t : {&c.k(l, 0), &c.v(l, 0)}) {
      ASSERT_TRUE(cache_->Reserve(*t, 8, 4).ok());
      t->length = 8;
    }
  }
  c.set_n_tokens(8);
  prefix.Insert(c, other, 8, chain_c);
  EXPECT_EQ(prefix.blocks(), 4);
  EXPECT_EQ(cache_->pool().pages_used(), pages_before + 4);  // one new page per table
  for (SequenceKv* s : {&b, &c, &d, &e, &f}) cache_->FreeSequence(s->id());
}

TEST_F(PrefixCacheTest, EvictsBlocksNoSequenceUsesLeastRecentlyUsedFirst) {
  const int64_t empty = cache_->pool().pages_used();
  {
    PrefixCache prefix(*cache_);
    SequenceKv& a = Filled(tokens_);
    PrefixCache::Chain chain;
    prefix.Insert(a, tokens_, 14, chain);
    EXPECT_EQ(prefix.UnusedPages(), 0);  // a still holds every page
    cache_->FreeSequence(a.id());
    EXPECT_EQ(prefix.UnusedPages(), 3 * 4);  // 3 blocks of 4 tables; a's partial page is gone
    EXPECT_EQ(cache_->pool().pages_used(), empty + 12);
    // A sequence that takes blocks 0-1 keeps them from being freed by an eviction.
    SequenceKv& b = cache_->CreateSequence(full_);
    PrefixCache::Chain chain_b;
    ASSERT_EQ(prefix.Attach(b, tokens_, 0, 8, chain_b), 8);
    EXPECT_EQ(prefix.UnusedPages(), 4);
    // Block 2 was used least recently (b touched 0 and 1): it goes first, and frees 4 pages.
    EXPECT_EQ(prefix.Evict(1), 4);
    EXPECT_EQ(prefix.blocks(), 2);
    // Blocks 0 and 1 go too, but b still holds their pages.
    EXPECT_EQ(prefix.Evict(100), 0);
    EXPECT_EQ(prefix.blocks(), 0);
    // Kept and dropped since the last events: only dropped is said (the final state).
    PrefixCache::Events events = prefix.TakeEvents();
    EXPECT_TRUE(events.added.empty());
    EXPECT_EQ(events.removed.size(), 3u);
    // Merged batches keep the last state of each block; a reset replaces what came before.
    PrefixCache::Events merged{.added = {1, 2}};
    merged.Merge({.removed = {2, 3}});
    EXPECT_EQ(merged.added, std::vector<uint64_t>({1}));
    std::sort(merged.removed.begin(), merged.removed.end());
    EXPECT_EQ(merged.removed, std::vector<uint64_t>({2, 3}));
    merged.Merge({.reset = true, .added = {7}});
    EXPECT_TRUE(merged.reset);
    EXPECT_EQ(merged.added, std::vector<uint64_t>({7}));
    EXPECT_TRUE(merged.removed.empty());
    EXPECT_EQ(cache_->pool().pages_used(), empty + 8);
    cache_->FreeSequence(b.id());
    SequenceKv& c = Filled(tokens_);
    prefix.Insert(c, tokens_, 14, chain);  // the chain goes on from where it was: nothing new
    EXPECT_EQ(prefix.blocks(), 0);
    PrefixCache::Chain fresh;
    prefix.Insert(c, tokens_, 14, fresh);
    EXPECT_EQ(prefix.blocks(), 3);
    // After a resync the events list every block held, as a reset.
    prefix.Resync();
    events = prefix.TakeEvents();
    EXPECT_TRUE(events.reset);
    EXPECT_EQ(events.added.size(), 3u);
    cache_->FreeSequence(c.id());
  }
  // The cache gives back what it held when it goes.
  EXPECT_EQ(cache_->pool().pages_used(), empty);
}

// The cache is the pool's reclaimer: when an allocation finds the pool empty, unused blocks go
// (a block a sequence still uses is dropped from the cache but frees nothing).
TEST_F(PrefixCacheTest, AFullPoolTakesPagesBackFromUnusedBlocks) {
  PrefixCache prefix(*cache_);
  SequenceKv& a = Filled(tokens_);
  PrefixCache::Chain chain;
  prefix.Insert(a, tokens_, 14, chain);
  cache_->FreeSequence(a.id());
  ASSERT_EQ(prefix.UnusedPages(), 12);
  // Take every free page.
  SequenceKv& big = cache_->CreateSequence(full_);
  const int32_t free = cache_->pool().pages_free();
  ASSERT_TRUE(cache_->Reserve(big.k(0, 0), free * 4, 0).ok());
  EXPECT_EQ(cache_->pool().pages_free(), 0);
  // Four more pages: one block (4 tables) goes back to the pool for them.
  EXPECT_TRUE(cache_->Reserve(big.v(0, 0), 4 * 4, 0).ok());
  EXPECT_EQ(prefix.blocks(), 2);
  // More than every block holds: ResourceExhausted once nothing is left to give back.
  EXPECT_TRUE(absl::IsResourceExhausted(cache_->Reserve(big.k(1, 0), 64 * 4, 0)));
  EXPECT_EQ(prefix.blocks(), 0);
  cache_->FreeSequence(big.id());
}

}  // namespace
}  // namespace kvasir::kvcache
