#include "kvcache/codec.h"

#include <random>
#include <string>
#include <vector>

#include "common/hash.h"
#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "kvcache/prefix_hash.h"

namespace kvasir::kvcache {
namespace {

// Test vectors computed independently with the Python `xxhash` package from the definition in
// prefix_hash.h (docs/kvcache.md lists them too).
TEST(PrefixHashTest, MatchesPublishedTestVectors) {
  EXPECT_EQ(PrefixHashSeed(), 0xb954a194321d217dULL);
  std::vector<int32_t> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[i] = i;
  const std::vector<uint64_t> h = PrefixHashes(tokens, 16);
  ASSERT_EQ(h.size(), 4u);
  EXPECT_EQ(h[0], 0xb0bf9c672ebbb2fbULL);
  EXPECT_EQ(h[1], 0xb8f583ee26e09d31ULL);
  EXPECT_EQ(h[2], 0xd3638cd54aa8b3b3ULL);
  EXPECT_EQ(h[3], 0x0e8a7fcdb9bf3ccaULL);
  EXPECT_EQ(PrefixHashTestVector(), h[3]);
  const std::vector<int32_t> story = {1, 403, 407, 261, 378, 432, 383, 286, 9};
  const std::vector<uint64_t> s = PrefixHashes(story, 4);
  ASSERT_EQ(s.size(), 2u) << "only whole blocks are hashed";
  EXPECT_EQ(s[0], 0xde3ac38b7fab9ac6ULL);
  EXPECT_EQ(s[1], 0xe9a82d836b318e02ULL);
}

TEST(PrefixHashTest, SharedPrefixesShareHashes) {
  std::vector<int32_t> a = {5, 6, 7, 8, 9, 10, 11, 12}, b = a;
  b[6] = 99;
  const auto ha = PrefixHashes(a, 4), hb = PrefixHashes(b, 4);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]);
  EXPECT_EQ(PrefixHashNext(PrefixHashSeed(), std::span<const int32_t>(a).subspan(0, 4)), ha[0]);
}

class CodecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_.n_layer = 3;
    g_.n_head = 4;
    g_.n_head_kv = 2;
    g_.head_dim = 8;
    g_.n_rot = 8;
    KvCacheOptions o;
    o.page_size = 4;
    o.capacity_bytes = 1 << 20;
    src_ = *KvCache::Create(g_, o);
    dst_ = *KvCache::Create(g_, o);
    policy_ = std::make_shared<FullPolicy>();
    seq_ = &src_->CreateSequence(policy_);
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    // Different lengths per head and for K and V, to check the layout keeps them apart.
    for (int l = 0; l < g_.n_layer; ++l) {
      for (int h = 0; h < g_.n_head_kv; ++h) {
        for (HeadTable* t : {&seq_->k(l, h), &seq_->v(l, h)}) {
          const int len = 3 + l * 5 + h * 2 + (t == &seq_->v(l, h) ? 1 : 0);
          ASSERT_TRUE(src_->Reserve(*t, len, 0).ok());
          t->length = len;
          std::vector<float> slot(8);
          for (int s = 0; s < len; ++s) {
            for (float& x : slot) x = u(rng);
            src_->WriteSlot(*t, s, slot.data());
          }
        }
      }
    }
    seq_->set_n_tokens(21);
  }

  void ExpectSameTables(const SequenceKv& a, const SequenceKv& b) {
    std::vector<float> x(8), y(8);
    for (int l = 0; l < g_.n_layer; ++l) {
      for (int h = 0; h < g_.n_head_kv; ++h) {
        for (bool is_k : {true, false}) {
          const HeadTable& ta = is_k ? a.k(l, h) : a.v(l, h);
          const HeadTable& tb = is_k ? b.k(l, h) : b.v(l, h);
          ASSERT_EQ(ta.length, tb.length);
          for (int s = 0; s < ta.length; ++s) {
            src_->ReadSlot(ta, s, x.data());
            dst_->ReadSlot(tb, s, y.data());
            ASSERT_EQ(x, y) << "layer " << l << " head " << h << " slot " << s;
          }
        }
      }
    }
  }

  KvGeometry g_;
  std::unique_ptr<KvCache> src_, dst_;
  std::shared_ptr<FullPolicy> policy_;
  SequenceKv* seq_ = nullptr;
};

TEST_F(CodecTest, RoundTripsTablesInOneOrManyBlocks) {
  for (int64_t max_block : {int64_t{1} << 20, int64_t{100}, int64_t{1}}) {
    SnapshotInfo info;
    info.model_fingerprint = 0xfeed;
    info.prefix_hash = 0xabc;
    info.max_block_bytes = max_block;
    auto blocks = EncodeSequence(*src_, *seq_, info);
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    if (max_block == 100) EXPECT_GT(blocks->size(), 10u);
    auto header = DecodeBlockHeader((*blocks)[0]);
    ASSERT_TRUE(header.ok());
    EXPECT_EQ(header->policy_spec, "full");
    EXPECT_EQ(header->n_tokens, 21);
    EXPECT_EQ(header->prefix_hash, 0xabcu);
    // Blocks may arrive in any order.
    std::vector<std::string> shuffled(blocks->rbegin(), blocks->rend());
    auto restored = DecodeSequence(*dst_, shuffled, policy_, 0xfeed);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ((*restored)->n_tokens(), 21);
    ExpectSameTables(*seq_, **restored);
    EXPECT_EQ(dst_->Usage(**restored).bytes, src_->Usage(*seq_).bytes);
    dst_->FreeSequence((*restored)->id());
    EXPECT_EQ(dst_->pool().pages_used(), 0);
  }
}

TEST_F(CodecTest, RefusesCorruptedForeignAndIncompleteBlocks) {
  SnapshotInfo info;
  info.model_fingerprint = 7;
  info.max_block_bytes = 256;
  auto blocks = EncodeSequence(*src_, *seq_, info);
  ASSERT_TRUE(blocks.ok());
  ASSERT_GT(blocks->size(), 2u);

  // One flipped payload bit: DataLoss naming the block.
  std::vector<std::string> bad = *blocks;
  bad[1].back() ^= 0x10;
  auto r = DecodeSequence(*dst_, bad, policy_, 7);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("KV block 1"), absl::string_view::npos) << r.status();
  // A flipped header bit.
  bad = *blocks;
  bad[0][20] ^= 0x01;
  EXPECT_EQ(DecodeSequence(*dst_, bad, policy_, 7).status().code(), absl::StatusCode::kDataLoss);
  // Truncated block, missing block, foreign model, other policy, not a block at all.
  bad = *blocks;
  bad[2].resize(bad[2].size() - 3);
  EXPECT_FALSE(DecodeSequence(*dst_, bad, policy_, 7).ok());
  bad = *blocks;
  bad.pop_back();
  EXPECT_FALSE(DecodeSequence(*dst_, bad, policy_, 7).ok());
  bad = *blocks;
  bad.push_back(bad[0]);
  EXPECT_FALSE(DecodeSequence(*dst_, bad, policy_, 7).ok()) << "a repeated chunk";
  EXPECT_EQ(DecodeSequence(*dst_, *blocks, policy_, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DecodeBlockHeader("hello").ok());
  EXPECT_FALSE(DecodeBlockHeader("").ok());
  // Nothing leaked by the failures.
  EXPECT_EQ(dst_->pool().pages_used(), 0);
  EXPECT_EQ(dst_->num_sequences(), 0u);
}

// A header field rewritten with a valid header checksum, as a forger (or a bug) would write it.
// `from_end`: the field's distance from the end of the header (payload offset 40, snapshot 24).
void SetHeaderField(std::string& block, size_t from_end, uint64_t value) {
  const size_t header_bytes = DecodeBlockHeader(block)->header_bytes;
  for (size_t i = 0; i < 8; ++i) block[header_bytes - from_end + i] = char(value >> (8 * i));
  const uint64_t sum = Xxh3(block.data(), header_bytes - 8);
  for (size_t i = 0; i < 8; ++i) block[header_bytes - 8 + i] = char(sum >> (8 * i));
}

TEST_F(CodecTest, RefusesChunksThatDoNotTileTheSnapshot) {
  SnapshotInfo info;
  info.max_block_bytes = 256;
  auto blocks = EncodeSequence(*src_, *seq_, info);
  ASSERT_TRUE(blocks.ok());
  ASSERT_GT(blocks->size(), 2u);
  // Every block claims a snapshot of 2^46 bytes (found by kv_codec_fuzz: it was allocated).
  std::vector<std::string> bad = *blocks;
  for (std::string& b : bad) SetHeaderField(b, 24, uint64_t{1} << 46);
  ASSERT_TRUE(DecodeBlockHeader(bad[0]).ok());
  auto r = DecodeSequence(*dst_, bad, policy_, 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  // Chunk 1 at offset 0: it overlaps chunk 0 and leaves a gap.
  bad = *blocks;
  SetHeaderField(bad[1], 40, 0);
  ASSERT_TRUE(DecodeBlockHeader(bad[1]).ok());
  r = DecodeSequence(*dst_, bad, policy_, 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_EQ(dst_->pool().pages_used(), 0);
  EXPECT_EQ(dst_->num_sequences(), 0u);
  EXPECT_TRUE(DecodeSequence(*dst_, *blocks, policy_, 0).ok());
}

// A snapshot written in parts of layers (as a prefill streams it) restores from the blocks of
// all its parts, in any order; a missing, overlapping or repeated part is refused.
TEST_F(CodecTest, RestoresASnapshotFromPartsOfLayers) {
  auto part = [&](int32_t l0, int32_t l1, int64_t n_tokens = -1) {
    SnapshotInfo info;
    info.model_fingerprint = 5;
    info.prefix_hash = 0x77;
    info.layer_begin = l0;
    info.layer_end = l1;
    info.n_tokens = n_tokens;
    info.max_block_bytes = 200;
    return EncodeSequence(*src_, *seq_, info);
  };
  auto a = part(0, 1, 21), b = part(1, 2, 21), c = part(2, 3);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(DecodeBlockHeader(a->front())->layer_end, 1);
  std::vector<std::string> all;
  for (auto* p : {&*c, &*a, &*b}) all.insert(all.end(), p->rbegin(), p->rend());
  auto restored = DecodeSequence(*dst_, all, policy_, 5);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ((*restored)->n_tokens(), 21);
  ExpectSameTables(*seq_, **restored);
  dst_->FreeSequence((*restored)->id());

  std::vector<std::string> missing = *a;
  missing.insert(missing.end(), c->begin(), c->end());
  auto r = DecodeSequence(*dst_, missing, policy_, 5);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  auto ab = part(0, 2, 21);
  ASSERT_TRUE(ab.ok());
  std::vector<std::string> overlap = *ab;
  overlap.insert(overlap.end(), b->begin(), b->end());
  overlap.insert(overlap.end(), c->begin(), c->end());
  r = DecodeSequence(*dst_, overlap, policy_, 5);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  std::vector<std::string> repeated = all;
  repeated.push_back(a->front());
  EXPECT_FALSE(DecodeSequence(*dst_, repeated, policy_, 5).ok());
  // A part of another token count belongs to another snapshot.
  auto later = part(0, 1, 22);
  ASSERT_TRUE(later.ok());
  std::vector<std::string> mixed = *later;
  mixed.insert(mixed.end(), b->begin(), b->end());
  mixed.insert(mixed.end(), c->begin(), c->end());
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeSequence(*dst_, mixed, policy_, 5).status()));
  // The part with the policy state is only taken between steps.
  EXPECT_TRUE(absl::IsFailedPrecondition(part(2, 3, 22).status()));
  EXPECT_EQ(dst_->pool().pages_used(), 0);
  EXPECT_EQ(dst_->num_sequences(), 0u);
}

TEST_F(CodecTest, EveryTruncationAndByteFlipIsRefusedWithoutACrash) {
  SnapshotInfo info;
  auto blocks = EncodeSequence(*src_, *seq_, info);
  ASSERT_TRUE(blocks.ok());
  ASSERT_EQ(blocks->size(), 1u);
  const std::string whole = (*blocks)[0];
  for (size_t cut = 0; cut < whole.size(); cut += 7) {
    std::vector<std::string> one = {whole.substr(0, cut)};
    ASSERT_FALSE(DecodeSequence(*dst_, one, policy_, 0).ok()) << cut;
  }
  for (size_t at = 0; at < whole.size(); at += 13) {
    std::vector<std::string> one = {whole};
    one[0][at] ^= 0x5a;
    ASSERT_FALSE(DecodeSequence(*dst_, one, policy_, 0).ok()) << at;
  }
  EXPECT_EQ(dst_->pool().pages_used(), 0);
}

}  // namespace
}  // namespace kvasir::kvcache
