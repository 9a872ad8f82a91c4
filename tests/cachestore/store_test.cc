// BlockStore in-process: two-phase writes, verification, the index and Lookup, LRU eviction,
// leases (with a fake clock), pins, and the disk tier (restart, corruption, capacity).
#include "cachestore/store.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "kvcache/prefix_hash.h"
#include "tests/cachestore/test_blocks.h"

namespace kvasir::cachestore {
namespace {

using testing::AsBytes;
using testing::Blocks;
using testing::KeyOf;

constexpr uint64_t kBlock = 8192;

class FakeClock {
 public:
  absl::Time Now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }
  std::function<absl::Time()> Fn() {
    return [this] { return now_; };
  }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

// Puts a whole block through Reserve + copy + Commit.
absl::Status Put(BlockStore& store, const std::string& block) {
  auto r = store.Reserve(KeyOf(block), block.size());
  if (!r.ok()) return r.status();
  if (r->state != ReserveState::kReserved) return absl::AlreadyExistsError("not reserved");
  std::memcpy(r->memory.data(), block.data(), block.size());
  return store.Commit(r->lease);
}

// Reads a block back through OpenRead + copy + Release.
absl::StatusOr<std::string> Get(BlockStore& store, const BlockKey& key) {
  auto g = store.OpenRead(key, absl::Now() + absl::Seconds(5));
  if (!g.ok()) return g.status();
  std::string out(reinterpret_cast<const char*>(g->memory.data()), g->memory.size());
  if (absl::Status s = store.Release(g->lease); !s.ok()) return s;
  return out;
}

std::string TempDir(const std::string& name) {
  std::string dir =
      ::testing::TempDir() + "/kvasir_cachestore_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(BlockStoreTest, NothingIsVisibleBeforeCommit) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20});
  const std::vector<std::string> blocks = Blocks(11, 1, kBlock);
  const std::string& b = blocks[0];
  const BlockKey key = KeyOf(b);
  auto r = store->Reserve(key, b.size());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->state, ReserveState::kReserved);
  // Written but not committed: invisible to readers and to Lookup.
  std::memcpy(r->memory.data(), b.data(), b.size());
  EXPECT_EQ(store->OpenRead(key, absl::Now()).status().code(), absl::StatusCode::kNotFound);
  const uint64_t h[] = {11};
  EXPECT_EQ(store->Lookup(key.space, h).matched_blocks, 0);
  // A second writer of the same block is told it is in progress.
  EXPECT_EQ(store->Reserve(key, b.size())->state, ReserveState::kInProgress);
  ASSERT_TRUE(store->Commit(r->lease).ok());
  EXPECT_EQ(*Get(*store, key), b);
  EXPECT_EQ(store->Reserve(key, b.size())->state, ReserveState::kAlreadyStored);
  EXPECT_EQ(store->Commit(r->lease).code(), absl::StatusCode::kNotFound) << "lease is spent";
  const StoreStats s = store->stats();
  EXPECT_EQ(s.memory_blocks, 1u);
  EXPECT_EQ(s.memory_bytes, b.size());
  EXPECT_EQ(s.bytes_in, b.size());
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.active_reservations, 0u);
  EXPECT_EQ(s.reserved_bytes, 0u);
}

TEST(BlockStoreTest, CommitVerifiesChecksumsAndKey) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20});
  const std::vector<std::string> blocks = Blocks(12, 2, kBlock);
  // A flipped payload byte: DataLoss, counted, and the block stays invisible.
  std::string bad = blocks[0];
  bad[bad.size() - 10] ^= 0x40;
  EXPECT_EQ(Put(*store, bad).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->stats().checksum_failures, 1u);
  EXPECT_EQ(store->OpenRead(KeyOf(blocks[0]), absl::Now()).status().code(),
            absl::StatusCode::kNotFound);
  // A flipped header byte.
  std::string bad_header = blocks[0];
  bad_header[20] ^= 0x01;
  auto r = store->Reserve(KeyOf(blocks[0]), bad_header.size());
  std::memcpy(r->memory.data(), bad_header.data(), bad_header.size());
  EXPECT_EQ(store->Commit(r->lease).code(), absl::StatusCode::kDataLoss);
  // Bytes of another block than the one reserved.
  r = store->Reserve(KeyOf(blocks[0]), blocks[1].size());
  ASSERT_TRUE(r.ok());
  std::memcpy(r->memory.data(), blocks[1].data(), blocks[1].size());
  const absl::Status wrong = store->Commit(r->lease);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument) << wrong;
  // Garbage.
  r = store->Reserve(KeyOf(blocks[0]), 100);
  std::memset(r->memory.data(), 0x5a, 100);
  EXPECT_EQ(store->Commit(r->lease).code(), absl::StatusCode::kInvalidArgument);
  // Every failed commit released its memory.
  EXPECT_EQ(store->stats().reserved_bytes, 0u);
  EXPECT_EQ(store->stats().memory_blocks, 0u);
  EXPECT_TRUE(Put(*store, blocks[0]).ok());
}

TEST(BlockStoreTest, RefusesBadSizesAndAbortFrees) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20, .max_block_bytes = 65536});
  const BlockKey key = KeyOf(Blocks(13, 1, kBlock)[0]);
  EXPECT_EQ(store->Reserve(key, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Reserve(key, 65537).status().code(), absl::StatusCode::kInvalidArgument);
  auto r = store->Reserve(key, 4096);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(store->stats().reserved_bytes, 4096u);
  EXPECT_TRUE(store->Abort(r->lease).ok());
  EXPECT_EQ(store->stats().reserved_bytes, 0u);
  EXPECT_EQ(store->Abort(r->lease).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Reserve(key, 4096)->state, ReserveState::kReserved) << "key free again";
}

TEST(BlockStoreTest, FallbackWriteAndReadInPieces) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20});
  const std::string b = Blocks(14, 1, kBlock)[0];
  auto r = *store->Reserve(KeyOf(b), b.size());
  const auto bytes = AsBytes(b);
  EXPECT_TRUE(store->Write(r.lease, 0, bytes.first(1000)).ok());
  EXPECT_TRUE(store->Write(r.lease, 1000, bytes.subspan(1000)).ok());
  EXPECT_EQ(store->Write(r.lease, b.size() - 1, bytes.first(2)).code(),
            absl::StatusCode::kOutOfRange);
  ASSERT_TRUE(store->Commit(r.lease).ok());
  auto g = *store->OpenRead(KeyOf(b), absl::Now());
  std::string out(b.size(), '\0');
  EXPECT_TRUE(store->Read(g.lease, 0, testing::AsWritable(out)).ok());
  EXPECT_EQ(out, b);
  std::string tail(10, '\0');
  EXPECT_EQ(store->Read(g.lease, b.size() - 5, testing::AsWritable(tail)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(store->Release(g.lease).ok());
  EXPECT_EQ(store->Release(g.lease).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Read(g.lease, 0, testing::AsWritable(out)).code(), absl::StatusCode::kNotFound);
}

TEST(BlockStoreTest, LookupFindsTheLongestWholeSnapshot) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 4 << 20});
  std::vector<int32_t> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[i] = 1000 + i;
  const std::vector<uint64_t> h = kvcache::PrefixHashes(tokens, 16);
  ASSERT_EQ(h.size(), 4u);
  // Snapshots after 1 block (whole), after 3 blocks (one chunk missing for now).
  const auto s1 = Blocks(h[0], 2, kBlock, 1);
  const auto s3 = Blocks(h[2], 3, kBlock, 3);
  for (const std::string& b : s1) ASSERT_TRUE(Put(*store, b).ok());
  for (size_t i = 0; i + 1 < s3.size(); ++i) ASSERT_TRUE(Put(*store, s3[i]).ok());
  const KeySpace space = KeyOf(s1[0]).space;
  LookupResult found = store->Lookup(space, h);
  EXPECT_EQ(found.matched_blocks, 1);
  EXPECT_EQ(found.prefix_hash, h[0]);
  ASSERT_EQ(found.chunk_bytes.size(), s1.size());
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(found.chunk_bytes[i], s1[i].size());
  ASSERT_TRUE(Put(*store, s3.back()).ok());
  found = store->Lookup(space, h);
  EXPECT_EQ(found.matched_blocks, 3);
  EXPECT_EQ(found.chunk_bytes.size(), s3.size());
  // Another TP shard, model or policy sees nothing.
  KeySpace other = space;
  other.head_begin = 1;
  EXPECT_EQ(store->Lookup(other, h).matched_blocks, 0);
  other = space;
  other.policy_spec = "streaming:sink=4,window=252";
  EXPECT_EQ(store->Lookup(other, h).matched_blocks, 0);
  // Only the first two blocks of the prompt are shared: the 1-block snapshot matches.
  std::vector<int32_t> other_tokens = tokens;
  other_tokens[40] = 7;
  EXPECT_EQ(store->Lookup(space, kvcache::PrefixHashes(other_tokens, 16)).matched_blocks, 1);
  EXPECT_EQ(store->stats().lookup_hits, 3u);
  EXPECT_EQ(store->stats().lookup_misses, 2u);
}

TEST(BlockStoreTest, LookupRunStopsAtTheFirstBlockNotStoredWhole) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 4 << 20});
  std::vector<int32_t> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[i] = 2000 + i;
  const std::vector<uint64_t> h = kvcache::PrefixHashes(tokens, 16);
  // One snapshot per block (the prefix-cache tier's entries): blocks 0 and 1 whole, block 2 with
  // a chunk missing, block 3 whole.
  const auto b0 = Blocks(h[0], 1, kBlock, 1);
  const auto b1 = Blocks(h[1], 2, kBlock, 2);
  const auto b2 = Blocks(h[2], 2, kBlock, 3);
  const auto b3 = Blocks(h[3], 1, kBlock, 4);
  for (const auto* s : {&b0, &b1, &b3}) {
    for (const std::string& b : *s) ASSERT_TRUE(Put(*store, b).ok());
  }
  for (size_t i = 0; i + 1 < b2.size(); ++i) ASSERT_TRUE(Put(*store, b2[i]).ok());
  const KeySpace space = KeyOf(b0[0]).space;
  auto run = store->LookupRun(space, h);
  ASSERT_GE(b2.size(), 2u);
  ASSERT_EQ(run.size(), 2u);
  for (size_t b = 0; b < 2; ++b) {
    const auto& chunks = b == 0 ? b0 : b1;
    ASSERT_EQ(run[b].size(), chunks.size());
    for (size_t c = 0; c < chunks.size(); ++c) EXPECT_EQ(run[b][c], chunks[c].size());
  }
  // From block 3 on: a run of one; from block 2 on: none.
  EXPECT_EQ(store->LookupRun(space, std::span<const uint64_t>(h).subspan(3)).size(), 1u);
  EXPECT_TRUE(store->LookupRun(space, std::span<const uint64_t>(h).subspan(2)).empty());
  ASSERT_TRUE(Put(*store, b2.back()).ok());
  EXPECT_EQ(store->LookupRun(space, h).size(), 4u);
  KeySpace other = space;
  other.policy_spec = "h2o:budget=64";
  EXPECT_TRUE(store->LookupRun(other, h).empty());
}

TEST(BlockStoreTest, RefusesAChunkOfAnInconsistentSnapshot) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 4 << 20});
  const auto a = Blocks(21, 3, kBlock, 1);
  const auto b = Blocks(21, 2, kBlock * 2, 1);  // same prefix, cut differently
  ASSERT_TRUE(Put(*store, a[0]).ok());
  const absl::Status s = Put(*store, b[1]);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(BlockStoreTest, EvictsLeastRecentlyUsedFirst) {
  // Room for exactly three blocks.
  const auto blocks = Blocks(31, 5, kBlock);
  auto store = *BlockStore::Create({.memory_capacity_bytes = 3 * kBlock});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Put(*store, blocks[i]).ok());
  ASSERT_TRUE(Get(*store, KeyOf(blocks[0])).ok());  // 0 is now the most recently used
  ASSERT_TRUE(Put(*store, blocks[3]).ok());         // evicts 1
  EXPECT_EQ(Get(*store, KeyOf(blocks[1])).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Put(*store, blocks[4]).ok());  // evicts 2
  EXPECT_EQ(Get(*store, KeyOf(blocks[2])).status().code(), absl::StatusCode::kNotFound);
  for (int i : {0, 3, 4}) EXPECT_EQ(*Get(*store, KeyOf(blocks[i])), blocks[i]) << i;
  EXPECT_EQ(store->stats().evictions_memory, 2u);
  EXPECT_EQ(store->stats().memory_blocks, 3u);
}

TEST(BlockStoreTest, NeverEvictsLeasedOrPinnedBlocks) {
  const auto blocks = Blocks(32, 4, kBlock);
  auto store = *BlockStore::Create({.memory_capacity_bytes = 2 * kBlock});
  ASSERT_TRUE(Put(*store, blocks[0]).ok());
  ASSERT_TRUE(Put(*store, blocks[1]).ok());
  auto reading = store->OpenRead(KeyOf(blocks[0]), absl::Now());
  ASSERT_TRUE(reading.ok());
  ASSERT_TRUE(store->Pin(KeyOf(blocks[1])).ok());
  const absl::Status full = Put(*store, blocks[2]);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(store->Remove(KeyOf(blocks[0])).code(), absl::StatusCode::kFailedPrecondition);
  // The lease ends: block 0 becomes the victim; the pinned block 1 stays.
  ASSERT_TRUE(store->Release(reading->lease).ok());
  ASSERT_TRUE(Put(*store, blocks[2]).ok());
  EXPECT_EQ(Get(*store, KeyOf(blocks[0])).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*Get(*store, KeyOf(blocks[1])), blocks[1]);
  EXPECT_EQ(store->stats().pinned_blocks, 1u);
  EXPECT_EQ(store->Unpin(KeyOf(blocks[1])).code(), absl::StatusCode::kOk);
  EXPECT_EQ(store->Unpin(KeyOf(blocks[1])).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Pin(KeyOf(blocks[3])).code(), absl::StatusCode::kNotFound);
  // Block 1 was read after block 2 was written: block 2 is the least recently used now.
  ASSERT_TRUE(Put(*store, blocks[3]).ok());
  EXPECT_EQ(Get(*store, KeyOf(blocks[2])).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*Get(*store, KeyOf(blocks[1])), blocks[1]);
  EXPECT_TRUE(store->Remove(KeyOf(blocks[3])).ok());
  EXPECT_EQ(Get(*store, KeyOf(blocks[3])).status().code(), absl::StatusCode::kNotFound);
}

TEST(BlockStoreTest, ExpiredLeasesAreReclaimed) {
  FakeClock clock;
  const auto blocks = Blocks(41, 3, kBlock);
  auto store = *BlockStore::Create(
      {.memory_capacity_bytes = 2 * kBlock, .lease_ttl = absl::Seconds(10), .clock = clock.Fn()});
  // A writer that reserved and vanished.
  auto r = *store->Reserve(KeyOf(blocks[0]), blocks[0].size());
  std::memcpy(r.memory.data(), blocks[0].data(), blocks[0].size());
  // A reader that opened and vanished.
  ASSERT_TRUE(Put(*store, blocks[1]).ok());
  auto g = *store->OpenRead(KeyOf(blocks[1]), absl::Now());
  clock.Advance(absl::Seconds(9));
  EXPECT_EQ(store->ReclaimExpired(clock.Now()), 0);
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(store->ReclaimExpired(clock.Now()), 2);
  StoreStats s = store->stats();
  EXPECT_EQ(s.expiries_reservation, 1u);
  EXPECT_EQ(s.expiries_read, 1u);
  EXPECT_EQ(s.active_reservations, 0u);
  EXPECT_EQ(s.active_read_leases, 0u);
  EXPECT_EQ(store->Commit(r.lease).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Release(g.lease).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->OpenRead(KeyOf(blocks[0]), absl::Now()).status().code(),
            absl::StatusCode::kNotFound)
      << "an expired reservation never becomes visible";
  // The reservation's memory is quarantined for one more TTL, so block 1 (no longer leased) is
  // evicted to make room, and the key can be reserved again.
  EXPECT_EQ(s.reserved_bytes, blocks[0].size());
  ASSERT_TRUE(Put(*store, blocks[2]).ok());
  EXPECT_EQ(store->OpenRead(KeyOf(blocks[1]), absl::Now()).status().code(),
            absl::StatusCode::kNotFound);
  clock.Advance(absl::Seconds(11));
  store->ReclaimExpired(clock.Now());
  EXPECT_EQ(store->stats().reserved_bytes, 0u);
  EXPECT_TRUE(Put(*store, blocks[0]).ok());
}

TEST(BlockStoreTest, DiskTierSurvivesRestartAndServesEveryBlock) {
  const std::string dir = TempDir("restart");
  const auto blocks = Blocks(51, 6, kBlock);
  {
    auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20, .disk_dir = dir});
    for (const std::string& b : blocks) ASSERT_TRUE(Put(*store, b).ok());
    EXPECT_EQ(store->stats().disk_blocks, blocks.size());
    // An interrupted write leaves only a temporary file behind.
    std::ofstream(dir + "/00/0000000000000001.kvb.tmp.1.1") << "partial";
  }
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20, .disk_dir = dir});
  const StoreStats s = store->stats();
  EXPECT_EQ(s.disk_blocks, blocks.size());
  EXPECT_EQ(s.memory_blocks, 0u);
  EXPECT_FALSE(std::filesystem::exists(dir + "/00/0000000000000001.kvb.tmp.1.1"));
  const uint64_t h[] = {51};
  EXPECT_EQ(store->Lookup(KeyOf(blocks[0]).space, h).matched_blocks, 1);
  for (const std::string& b : blocks) EXPECT_EQ(*Get(*store, KeyOf(b)), b);
  EXPECT_EQ(store->stats().disk_loads, blocks.size());
  EXPECT_EQ(store->stats().memory_blocks, blocks.size());
  std::filesystem::remove_all(dir);
}

TEST(BlockStoreTest, CorruptedDiskBlocksAreDetectedAndDropped) {
  const std::string dir = TempDir("corrupt");
  const auto blocks = Blocks(52, 4, kBlock);
  std::string payload_path, header_path;
  {
    auto store = *BlockStore::Create(
        {.memory_capacity_bytes = 1 << 20, .disk_dir = dir, .disk_fsync = false});
    for (const std::string& b : blocks) ASSERT_TRUE(Put(*store, b).ok());
  }
  auto disk = *DiskTier::Open({.dir = dir});
  payload_path = disk->PathOf(KeyOf(blocks[1]));
  header_path = disk->PathOf(KeyOf(blocks[2]));
  {
    std::fstream f(payload_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(kBlock - 100));
    f.put('\x7f');
  }
  {
    std::fstream f(header_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('\x7f');
  }
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20, .disk_dir = dir});
  // The header corruption is found by the start-up scan, the payload one on read.
  EXPECT_EQ(store->stats().checksum_failures, 1u);
  EXPECT_EQ(store->stats().disk_blocks, blocks.size() - 1);
  EXPECT_FALSE(std::filesystem::exists(header_path));
  const absl::Status bad = Get(*store, KeyOf(blocks[1])).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss) << bad;
  EXPECT_EQ(store->stats().checksum_failures, 2u);
  EXPECT_FALSE(std::filesystem::exists(payload_path));
  EXPECT_EQ(Get(*store, KeyOf(blocks[1])).status().code(), absl::StatusCode::kNotFound);
  const uint64_t h[] = {52};
  EXPECT_EQ(store->Lookup(KeyOf(blocks[0]).space, h).matched_blocks, 0) << "snapshot incomplete";
  EXPECT_EQ(*Get(*store, KeyOf(blocks[0])), blocks[0]);
  EXPECT_EQ(*Get(*store, KeyOf(blocks[3])), blocks[3]);
  std::filesystem::remove_all(dir);
}

TEST(BlockStoreTest, MemoryEvictionKeepsTheDiskCopy) {
  const std::string dir = TempDir("tiers");
  const auto blocks = Blocks(53, 4, kBlock);
  auto store = *BlockStore::Create({.memory_capacity_bytes = 2 * kBlock,
                                    .disk_dir = dir,
                                    .disk_capacity_bytes = 3 * kBlock,
                                    .disk_fsync = false});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Put(*store, blocks[i]).ok());
  StoreStats s = store->stats();
  EXPECT_EQ(s.memory_blocks, 2u);
  EXPECT_EQ(s.disk_blocks, 3u);
  EXPECT_EQ(s.evictions_memory, 1u);
  EXPECT_EQ(*Get(*store, KeyOf(blocks[0])), blocks[0]) << "loaded back from disk";
  EXPECT_EQ(store->stats().disk_loads, 1u);
  // The disk tier is full: the least recently used unpinned block leaves it.
  ASSERT_TRUE(store->Pin(KeyOf(blocks[1])).ok());
  ASSERT_TRUE(Put(*store, blocks[3]).ok());
  s = store->stats();
  EXPECT_EQ(s.disk_blocks, 3u);
  EXPECT_EQ(s.evictions_disk, 1u);
  auto disk = *DiskTier::Open({.dir = dir});
  EXPECT_TRUE(std::filesystem::exists(disk->PathOf(KeyOf(blocks[1])))) << "pinned";
  EXPECT_FALSE(std::filesystem::exists(disk->PathOf(KeyOf(blocks[2])))) << "least recent";
  std::filesystem::remove_all(dir);
}

TEST(BlockStoreTest, PutBlockAndBadInput) {
  auto store = *BlockStore::Create({.memory_capacity_bytes = 1 << 20});
  const std::string b = Blocks(61, 1, 4096)[0];
  EXPECT_EQ(*store->PutBlock(AsBytes(b)), ReserveState::kReserved);
  EXPECT_EQ(*store->PutBlock(AsBytes(b)), ReserveState::kAlreadyStored);
  const std::string junk(300, 'x');
  EXPECT_EQ(store->PutBlock(AsBytes(junk)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->PutBlock({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockStore::Create({.memory_capacity_bytes = 100}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockStore::Create({.disk_dir = "/proc/version"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvasir::cachestore
