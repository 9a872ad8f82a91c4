// The hand-off that disaggregated serving rests on: a sequence prefilled, encoded into KV blocks,
// decoded into a fresh cache (another runner over the same weights) and decoded further gives the
// same logits, bit for bit, as the uninterrupted sequence; for every KV policy, with the blocks
// handed over in memory, and through a cachestore (PushSequence / PullSequence, over UCX and over
// the RPC fallback).
#include <cstring>
#include <string>
#include <vector>

#include "cachestore/service.h"
#include "gtest/gtest.h"
#include "kvcache/codec.h"
#include "kvcache/prefix_hash.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"
#include "worker/kv_transfer.h"

namespace kvasir::worker {
namespace {

enum class Via { kMemory, kStoreUcx, kStoreRpc };

using CodecHandoffTest = e2e::StoriesSuite<::testing::TestWithParam<std::tuple<std::string, Via>>>;

TEST_P(CodecHandoffTest, RestoredSequenceContinuesBitForBit) {
  Engine& e = *engine_;
  const auto& [spec, via] = GetParam();
  auto policy = e.Policy(spec);
  ASSERT_TRUE(policy.ok()) << policy.status();
  const model::ModelConfig& c = e.config();

  // A second cache and runner over the same weights: "another node".
  kvcache::KvCacheOptions ko;
  ko.capacity_bytes = 64 << 20;
  auto cache2 = kvcache::KvCache::Create(e.cache().geometry(), ko);
  ASSERT_TRUE(cache2.ok());
  CpuRunnerOptions ro;
  ro.num_threads = 2;
  auto runner2 = CreateCpuRunner(c, e.weights(), **cache2, ro);
  ASSERT_TRUE(runner2.ok());

  const std::vector<int32_t> prompt = e2e::BallPrompt(e);
  ASSERT_GT(prompt.size(), 30u);
  kvcache::SequenceKv& a = e.cache().CreateSequence(*policy);
  std::vector<float> logits_a, logits_b;
  // Prefill in two chunks, as a prefill node would.
  const size_t half = prompt.size() / 2;
  StepSequence s1{&a, std::span<const int32_t>(prompt).subspan(0, half), false};
  ASSERT_TRUE(e.runner().Forward({&s1, 1}, logits_a).ok());
  StepSequence s2{&a, std::span<const int32_t>(prompt).subspan(half), false};
  ASSERT_TRUE(e.runner().Forward({&s2, 1}, logits_a).ok());

  const uint64_t fingerprint = e.files().fingerprint();
  kvcache::SequenceKv* b = nullptr;
  if (via == Via::kMemory) {
    kvcache::SnapshotInfo info;
    info.model_fingerprint = fingerprint;
    info.prefix_hash = kvcache::PrefixHashes(prompt).back();
    info.max_block_bytes = 16 << 10;  // several blocks
    auto blocks = kvcache::EncodeSequence(e.cache(), a, info);
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    auto restored = kvcache::DecodeSequence(**cache2, *blocks, *policy, fingerprint);
    ASSERT_TRUE(restored.ok()) << restored.status();
    b = *restored;
  } else {
    cachestore::ServiceOptions so;
    so.http = false;
    so.store.memory_capacity_bytes = 64 << 20;
    so.store.arena_bytes = 32 << 20;
    so.ucx = via == Via::kStoreUcx ? cachestore::UcxMode::kAuto : cachestore::UcxMode::kOff;
    auto service = cachestore::StoreService::Start(so);
    ASSERT_TRUE(service.ok()) << service.status();
    cachestore::ClientOptions co;
    co.port = (*service)->port();
    co.data_path = via == Via::kStoreUcx ? cachestore::DataPath::kUcx : cachestore::DataPath::kRpc;
    auto store = cachestore::StoreClient::Connect(co);
    ASSERT_TRUE(store.ok()) << store.status();
    auto sent = PushSequence(**store, e.cache(), a, prompt, fingerprint);
    ASSERT_TRUE(sent.ok()) << sent.status();
    EXPECT_GE(sent->blocks, 1);
    EXPECT_GT(sent->bytes, sent->kv_bytes);  // headers and checksums on top of the KV
    EXPECT_EQ(sent->kv_bytes, e.cache().Usage(a).bytes);
    // Another prompt, or the same one cut short, finds nothing.
    std::vector<int32_t> shorter(prompt.begin(), prompt.end() - 1);
    EXPECT_TRUE(
        absl::IsNotFound(PullSequence(**store, **cache2, *policy, shorter, fingerprint).status()));
    KvTransferStats got;
    auto restored =
        PullSequence(**store, **cache2, *policy, prompt, fingerprint, absl::Seconds(10), &got);
    ASSERT_TRUE(restored.ok()) << restored.status();
    b = *restored;
    EXPECT_EQ(got.bytes, sent->bytes);
    EXPECT_EQ(got.blocks, sent->blocks);
    // No lease or reservation is left behind.
    auto stats = (*store)->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->active_reservations(), 0u);
    EXPECT_EQ(stats->active_read_leases(), 0u);
  }

  EXPECT_EQ(b->n_tokens(), a.n_tokens());
  EXPECT_EQ((*cache2)->Usage(*b).bytes, e.cache().Usage(a).bytes);

  // Decode 24 more tokens on both, greedily from a's logits; every step's logits must be equal.
  int32_t next = ArgMax(std::span<const float>(logits_a.data(), c.n_vocab));
  for (int step = 0; step < 24; ++step) {
    StepSequence da{&a, std::span<const int32_t>(&next, 1), false};
    StepSequence db{b, std::span<const int32_t>(&next, 1), false};
    ASSERT_TRUE(e.runner().Forward({&da, 1}, logits_a).ok());
    ASSERT_TRUE((*runner2)->Forward({&db, 1}, logits_b).ok());
    ASSERT_EQ(logits_a.size(), logits_b.size());
    ASSERT_EQ(std::memcmp(logits_a.data(), logits_b.data(), logits_a.size() * sizeof(float)), 0)
        << "step " << step;
    next = ArgMax(std::span<const float>(logits_a.data(), c.n_vocab));
  }
  EXPECT_EQ((*cache2)->Usage(*b).bytes, e.cache().Usage(a).bytes);
  e.cache().FreeSequence(a.id());
  (*cache2)->FreeSequence(b->id());
  EXPECT_EQ((*cache2)->pool().pages_used(), 0);
}

// Small budgets so that every policy actually compresses within ~60 tokens.
INSTANTIATE_TEST_SUITE_P(
    Policies, CodecHandoffTest,
    ::testing::Combine(::testing::Values("full", "streaming:sink=4,window=16",
                                         "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
                                         "dmc:mode=learned", "pod:sink=4,window=16",
                                         "lococo:slots=16,chunk=4"),
                       ::testing::Values(Via::kMemory, Via::kStoreUcx, Via::kStoreRpc)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, Via>>& info) {
      const std::string& spec = std::get<0>(info.param);
      std::string name = spec.substr(0, spec.find(':'));
      if (spec.find("learned") != std::string::npos) name += "_learned";
      const Via via = std::get<1>(info.param);
      return name + (via == Via::kMemory ? "_memory" : via == Via::kStoreUcx ? "_ucx" : "_rpc");
    });

}  // namespace
}  // namespace kvasir::worker
