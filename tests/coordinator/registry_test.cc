// coordinator/registry: registration, heartbeats and their timeout, dead workers, and
// least-loaded routing, with in-test channels (no sockets).
#include "coordinator/registry.h"

#include <atomic>
#include <map>

#include "gtest/gtest.h"

namespace kvasir::coordinator {
namespace {

class NullChannel : public transport::rpc::RpcChannel {
 public:
  absl::StatusOr<std::string> Call(std::string_view, std::string_view,
                                   const transport::rpc::CallOptions&) override {
    return absl::UnimplementedError("test channel");
  }
  absl::StatusOr<std::unique_ptr<transport::rpc::ClientStream>> OpenStream(
      std::string_view, std::string_view, const transport::rpc::CallOptions&) override {
    return absl::UnimplementedError("test channel");
  }
};

class RegistryTest : public ::testing::Test {
 protected:
  RegistryTest()
      : registry_({.heartbeat_timeout = absl::Milliseconds(300), .model = "m", .n_vocab = 512},
                  [this](const std::string& host, uint16_t port) -> absl::StatusOr<WorkerChannel> {
                    const std::string address = host + ":" + std::to_string(port);
                    auto connected = std::make_shared<std::atomic<bool>>(true);
                    connected_[address] = connected;
                    ++channels_created_;
                    return WorkerChannel{std::make_shared<NullChannel>(),
                                         [connected] { return connected->load(); }};
                  }) {}

  static serving::WorkerInfo Info(const std::string& name, int port) {
    serving::WorkerInfo info;
    info.set_name(name);
    info.set_rpc_address("127.0.0.1:" + std::to_string(port));
    info.set_http_address("127.0.0.1:1");
    info.set_model("m");
    info.set_n_vocab(512);
    info.set_role("both");
    return info;
  }

  static serving::WorkerLoad Load(double kv_usage) {
    serving::WorkerLoad load;
    load.set_kv_usage(kv_usage);
    return load;
  }

  std::map<std::string, std::shared_ptr<std::atomic<bool>>> connected_;
  int channels_created_ = 0;
  WorkerRegistry registry_;
};

TEST_F(RegistryTest, RegistersAndRefusesOtherModels) {
  auto a = registry_.Register(Info("a", 7001));
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = registry_.Register(Info("b", 7002));
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(registry_.Snapshot().size(), 2u);

  serving::WorkerInfo other = Info("c", 7003);
  other.set_model("other-model");
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_.Register(other).status()));
  serving::WorkerInfo vocab = Info("c", 7003);
  vocab.set_n_vocab(32000);
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_.Register(vocab).status()));
  serving::WorkerInfo bad_address = Info("c", 7003);
  bad_address.set_rpc_address("nowhere");
  EXPECT_TRUE(absl::IsInvalidArgument(registry_.Register(bad_address).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(registry_.Register(Info("", 7004)).status()));
  EXPECT_EQ(registry_.Snapshot().size(), 2u);

  // The same name again replaces the old entry (a restarted worker).
  auto a2 = registry_.Register(Info("a", 7005));
  ASSERT_TRUE(a2.ok());
  EXPECT_FALSE(registry_.Heartbeat(*a, "a", Load(0)));
  EXPECT_TRUE(registry_.Heartbeat(*a2, "a", Load(0)));
  const auto snapshot = registry_.Snapshot();
  ASSERT_EQ(snapshot.size(), 2u);
  EXPECT_EQ(snapshot[1].rpc_address, "127.0.0.1:7005");
}

// After a coordinator restart ids start again at 1: a worker that still holds its old id must not
// take another worker's registration for its own (it would never register again).
TEST_F(RegistryTest, AHeartbeatWithAnotherWorkersIdIsNotKnown) {
  auto b = registry_.Register(Info("b", 7002));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(registry_.Heartbeat(*b, "b", Load(0)));
  EXPECT_FALSE(registry_.Heartbeat(*b, "a", Load(0)));
  EXPECT_FALSE(registry_.Heartbeat(*b + 1000, "b", Load(0)));
}

TEST_F(RegistryTest, PicksTheLeastLoadedConnectedWorker) {
  const uint64_t a = *registry_.Register(Info("a", 7001));
  const uint64_t b = *registry_.Register(Info("b", 7002));
  registry_.Heartbeat(a, "a", Load(0.5));
  registry_.Heartbeat(b, "b", Load(0.1));
  // Equal in-flight counts: the lower KV usage wins.
  auto first = registry_.Pick();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, b);
  // Now b has one in flight: a.
  auto second = registry_.Pick();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, a);
  // Both have one: b again (lower KV usage).
  auto third = registry_.Pick();
  EXPECT_EQ(third->id, b);
  registry_.Release(b);
  registry_.Release(b);
  auto fourth = registry_.Pick();
  EXPECT_EQ(fourth->id, b);
  // Exclusion and disconnected workers.
  auto only_a = registry_.Pick({b});
  EXPECT_EQ(only_a->id, a);
  connected_["127.0.0.1:7001"]->store(false);
  auto not_a = registry_.Pick({b});
  EXPECT_FALSE(not_a.has_value());
  const auto snapshot = registry_.Snapshot();
  EXPECT_FALSE(snapshot[0].connected);
  EXPECT_TRUE(snapshot[1].connected);
  EXPECT_EQ(snapshot[0].inflight, 2);
}

TEST_F(RegistryTest, SpreadsRequestsWhenIdle) {
  const uint64_t a = *registry_.Register(Info("a", 7001));
  const uint64_t b = *registry_.Register(Info("b", 7002));
  std::map<uint64_t, int> count;
  for (int i = 0; i < 10; ++i) {
    auto lease = registry_.Pick();
    ASSERT_TRUE(lease.has_value());
    ++count[lease->id];
    registry_.Release(lease->id);
  }
  EXPECT_EQ(count[a], 5);
  EXPECT_EQ(count[b], 5);
}

TEST_F(RegistryTest, HeartbeatTimeoutAndMarkDead) {
  const uint64_t a = *registry_.Register(Info("a", 7001));
  const uint64_t b = *registry_.Register(Info("b", 7002));
  EXPECT_TRUE(registry_.Sweep(absl::Now()).empty());
  // b keeps beating, a does not.
  const absl::Time later = absl::Now() + absl::Milliseconds(400);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(registry_.Heartbeat(b, "b", Load(0)));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(registry_.Heartbeat(b, "b", Load(0)));
  const std::vector<std::string> dead = registry_.Sweep(later);
  EXPECT_EQ(dead, std::vector<std::string>{"a"});
  EXPECT_FALSE(registry_.Heartbeat(a, "a", Load(0)));  // tells the worker to register again
  EXPECT_EQ(registry_.deaths(), 1);
  auto lease = registry_.Pick();
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->id, b);
  // A broken connection kills at once; a lease held on it stays usable until released.
  registry_.MarkDead(b, absl::UnavailableError("connection reset"));
  EXPECT_FALSE(registry_.Pick().has_value());
  EXPECT_NE(lease->channel, nullptr);
  registry_.Release(lease->id);                            // no-op on a dropped worker
  registry_.MarkDead(b, absl::UnavailableError("again"));  // no-op
  EXPECT_EQ(registry_.deaths(), 2);
  EXPECT_TRUE(registry_.Snapshot().empty());
  // Registering again works.
  ASSERT_TRUE(registry_.Register(Info("a", 7001)).ok());
  EXPECT_TRUE(registry_.Pick().has_value());
}

}  // namespace
}  // namespace kvasir::coordinator

namespace kvasir::coordinator {
namespace {

// KV-aware routing: a worker's heartbeats say which prefix-cache blocks it holds; Pick sends a
// request to the worker holding the longest leading run of its blocks, until that worker's load
// outweighs the blocks it saves; the index follows removals and resets; without KV routing the
// blocks are not looked at.
TEST_F(RegistryTest, RoutesByCachedPrefixBlocksAgainstLoad) {
  serving::WorkerInfo info_a = Info("a", 7001), info_b = Info("b", 7002);
  info_a.set_prefix_block_tokens(16);
  info_b.set_prefix_block_tokens(16);
  const uint64_t a = *registry_.Register(info_a);
  const uint64_t b = *registry_.Register(info_b);
  const std::vector<uint64_t> chain = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
  serving::PrefixCacheEvents events;
  for (int i = 0; i < 8; ++i) events.add_added(chain[i]);  // b holds the first 8 blocks
  ASSERT_TRUE(registry_.Heartbeat(b, "b", Load(0.5), &events));
  serving::PrefixCacheEvents some;
  some.add_added(11);  // a holds only the first
  ASSERT_TRUE(registry_.Heartbeat(a, "a", Load(0.0), &some));
  int64_t matched = -1;
  auto lease = registry_.Pick({}, "", chain, 16, &matched);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->id, b);
  EXPECT_EQ(matched, 8);
  // b stays preferred while its extra load costs less than the 7 blocks it saves (4 per request
  // in flight): with 1 in flight still b, with 2 a.
  auto second = registry_.Pick({}, "", chain, 16, &matched);
  EXPECT_EQ(second->id, b);
  auto third = registry_.Pick({}, "", chain, 16, &matched);
  EXPECT_EQ(third->id, a);
  EXPECT_EQ(matched, 1);
  for (uint64_t id : {b, b, a}) registry_.Release(id);
  // Another block size than the chain's, or a chain nobody holds: load alone (a: less KV used).
  EXPECT_EQ(registry_.Pick({}, "", chain, 32, &matched)->id, a);
  EXPECT_EQ(matched, 0);
  registry_.Release(a);
  const std::vector<uint64_t> other = {99, 98};
  EXPECT_EQ(registry_.Pick({}, "", other, 16)->id, a);
  registry_.Release(a);
  // b drops block 12: its run is 1 block, as a's: the less loaded a.
  serving::PrefixCacheEvents removed;
  removed.add_removed(12);
  ASSERT_TRUE(registry_.Heartbeat(b, "b", Load(0.5), &removed));
  EXPECT_EQ(registry_.Pick({}, "", chain, 16, &matched)->id, a);
  registry_.Release(a);
  // A reset lists everything b holds now: all 10.
  serving::PrefixCacheEvents reset;
  reset.set_reset(true);
  for (uint64_t h : chain) reset.add_added(h);
  ASSERT_TRUE(registry_.Heartbeat(b, "b", Load(0.5), &reset));
  EXPECT_EQ(registry_.Pick({}, "", chain, 16, &matched)->id, b);
  EXPECT_EQ(matched, 10);
  registry_.Release(b);
}

// The store index: blocks any worker wrote to the cachestore make every worker whose second tier
// is the store nearly as good as the one that holds them (a block read costs 1/8 of one
// computed), and do nothing for a worker without the store tier.
TEST_F(RegistryTest, BlocksInTheStoreCountForWorkersThatReadThem) {
  serving::WorkerInfo info_a = Info("a", 7001), info_b = Info("b", 7002);
  info_a.set_prefix_block_tokens(16);
  info_b.set_prefix_block_tokens(16);
  info_a.set_prefix_store(true);
  const uint64_t a = *registry_.Register(info_a);
  const uint64_t b = *registry_.Register(info_b);
  const std::vector<uint64_t> chain = {31, 32, 33, 34, 35, 36, 37, 38};
  serving::PrefixCacheEvents b_holds;
  for (int i = 0; i < 2; ++i) b_holds.add_added(chain[i]);  // b: the first 2 blocks, locally
  ASSERT_TRUE(registry_.Heartbeat(b, "b", Load(0.0), &b_holds));
  serving::PrefixCacheEvents a_wrote;
  for (int i = 0; i < 6; ++i) a_wrote.add_stored(chain[i]);  // in the store: the first 6
  ASSERT_TRUE(registry_.Heartbeat(a, "a", Load(0.5), &a_wrote));
  int64_t matched = -1, stored = -1;
  // a computes 2 blocks and reads 6 (cost 8 * 2 + 6), b computes 6 (8 * 6): a.
  auto lease = registry_.Pick({}, "", chain, 16, &matched, &stored);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->id, a);
  EXPECT_EQ(matched, 0);
  EXPECT_EQ(stored, 6);
  registry_.Release(a);
  // Without the store tier the stored blocks are worth nothing to a: b, which holds 2 itself.
  info_a.set_prefix_store(false);
  const uint64_t a2 = *registry_.Register(info_a);
  auto second = registry_.Pick({}, "", chain, 16, &matched, &stored);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, b);
  EXPECT_EQ(matched, 2);
  EXPECT_EQ(stored, 0);
  registry_.Release(b);
  (void)a2;
}

TEST(RegistryRoutingTest, LoadAloneIgnoresCachedBlocks) {
  WorkerRegistry registry(
      {.kv_routing = false}, [](const std::string&, uint16_t) -> absl::StatusOr<WorkerChannel> {
        return WorkerChannel{std::make_shared<NullChannel>(), [] { return true; }};
      });
  serving::WorkerInfo info;
  info.set_rpc_address("127.0.0.1:7001");
  info.set_http_address("127.0.0.1:1");
  info.set_role("both");
  info.set_prefix_block_tokens(16);
  info.set_name("a");
  const uint64_t a = *registry.Register(info);
  info.set_name("b");
  info.set_rpc_address("127.0.0.1:7002");
  const uint64_t b = *registry.Register(info);
  serving::PrefixCacheEvents events;
  events.add_added(1);
  events.add_added(2);
  serving::WorkerLoad busy;
  busy.set_kv_usage(0.9);
  ASSERT_TRUE(registry.Heartbeat(b, "b", busy, &events));
  int64_t matched = -1;
  const std::vector<uint64_t> chain = {1, 2};
  EXPECT_EQ(registry.Pick({}, "", chain, 16, &matched)->id, a);
  EXPECT_EQ(matched, 0);
}

}  // namespace
}  // namespace kvasir::coordinator
