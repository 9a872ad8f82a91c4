// StoreService + StoreClient in one process over loopback: the same suite on the UCX data path
// and on the RPC fallback, concurrent clients, the explicit two-phase API, leases through the
// service, malformed requests, and /health, /ready and /metrics over HTTP.
#include "cachestore/service.h"

#include <atomic>
#include <thread>

#include "cachestore/client.h"
#include "cachestore/protocol.h"
#include "gtest/gtest.h"
#include "kvcache/prefix_hash.h"
#include "tests/cachestore/test_blocks.h"
#include "transport/http/client.h"
#include "transport/rpc/client.h"

namespace kvasir::cachestore {
namespace {

using testing::AsBytes;
using testing::Blocks;
using testing::KeyOf;

std::unique_ptr<StoreService> StartService(ServiceOptions o = {}) {
  o.port = 0;
  o.http_port = 0;
  if (o.store.memory_capacity_bytes == (1ull << 30)) o.store.memory_capacity_bytes = 64 << 20;
  o.store.arena_bytes = 32 << 20;
  auto service = StoreService::Start(o);
  EXPECT_TRUE(service.ok()) << service.status();
  return service.ok() ? *std::move(service) : nullptr;
}

std::unique_ptr<StoreClient> ConnectClient(const StoreService& service, DataPath path,
                                           ClientOptions o = {}) {
  o.port = service.port();
  o.data_path = path;
  auto client = StoreClient::Connect(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

class StoreServiceTest : public ::testing::TestWithParam<DataPath> {};

TEST_P(StoreServiceTest, PutLookupGetAcrossSizesAndPaths) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  auto client = ConnectClient(*service, GetParam());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->using_ucx(), GetParam() == DataPath::kUcx) << client->data_path();

  std::vector<int32_t> tokens(48);
  for (int i = 0; i < 48; ++i) tokens[i] = 7 * i + 1;
  const std::vector<uint64_t> h = kvcache::PrefixHashes(tokens, 16);
  // Snapshots after 1 block (small blocks: inline), and after 3 blocks (1 MiB and 5 MiB blocks:
  // the data path proper, over several batches and pieces).
  const auto small = Blocks(h[0], 3, 4096, 1);
  const auto mid = Blocks(h[2], 2, 1 << 20, 2);
  const auto big = Blocks(h[1], 1, 5 << 20, 3);
  std::vector<std::span<const std::byte>> all;
  for (const auto* set : {&small, &mid, &big}) {
    for (const std::string& b : *set) all.push_back(AsBytes(b));
  }
  auto put = client->PutBatch(all);
  ASSERT_TRUE(put.ok()) << put.status();
  for (size_t i = 0; i < all.size(); ++i) {
    ASSERT_TRUE((*put)[i].ok()) << i << ": " << (*put)[i].status();
    EXPECT_EQ(*(*put)[i], PutResult::kStored) << i;
  }
  EXPECT_EQ(*client->Put(AsBytes(mid[0])), PutResult::kAlreadyStored);
  EXPECT_EQ(*client->Put(AsBytes(small[0])), PutResult::kAlreadyStored);

  const KeySpace space = KeyOf(small[0]).space;
  auto found = client->LookupTokens(space, tokens, 16);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->matched_blocks, 3);
  ASSERT_EQ(found->chunk_bytes.size(), mid.size());
  // Only the first block of the prompt is shared by this one.
  std::vector<int32_t> other = tokens;
  other[20] = 99;
  EXPECT_EQ(client->LookupTokens(space, other, 16)->matched_blocks, 1);

  // Every block back, byte for byte, into registered memory.
  auto buffer = client->AllocateBuffer(6 << 20);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  for (const auto* set : {&small, &mid, &big}) {
    for (const std::string& b : *set) {
      auto n = client->Get(KeyOf(b), *buffer);
      ASSERT_TRUE(n.ok()) << n.status();
      ASSERT_EQ(*n, b.size());
      EXPECT_EQ(std::memcmp(buffer->data(), b.data(), b.size()), 0);
    }
  }
  // A batch: results per key, a miss among them, and a buffer too small for one.
  BlockKey missing = KeyOf(small[0]);
  missing.prefix_hash ^= 1;
  std::string a(8192, '\0'), b(100, '\0'), c(8192, '\0');
  const BlockKey keys[] = {KeyOf(small[1]), KeyOf(small[2]), missing};
  const std::span<std::byte> outs[] = {testing::AsWritable(a), testing::AsWritable(b),
                                       testing::AsWritable(c)};
  auto got = client->GetBatch(keys, outs);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*(*got)[0], small[1].size());
  EXPECT_EQ(a.substr(0, small[1].size()), small[1]);
  EXPECT_EQ((*got)[1].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*got)[2].status().code(), absl::StatusCode::kNotFound);

  // Pins, removal, stats.
  const BlockKey pinned[] = {KeyOf(mid[0])};
  EXPECT_TRUE((*client->Pin(pinned))[0].ok());
  EXPECT_EQ((*client->Remove(pinned))[0].code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*client->Unpin(pinned))[0].ok());
  EXPECT_TRUE((*client->Remove(pinned))[0].ok());
  EXPECT_EQ(client->Get(KeyOf(mid[0]), *buffer).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->LookupTokens(space, tokens, 16)->matched_blocks, 2)
      << "the 3-block snapshot lost a chunk; the 2-block one (big) is whole";
  auto stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->memory_blocks(), all.size() - 1);
  EXPECT_GE(stats->hits(), all.size());
  EXPECT_EQ(stats->active_read_leases(), 0u) << "every read lease was released";
  EXPECT_EQ(stats->active_reservations(), 0u);

  // Bad input from the client side.
  const std::string junk(5000, 'j');
  EXPECT_EQ(client->Put(AsBytes(junk)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->GetBlock(missing).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreServiceTest, TwoPhaseWritesAreInvisibleUntilCommitted) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  auto client = ConnectClient(*service, GetParam());
  ASSERT_NE(client, nullptr);
  const auto blocks = Blocks(77, 2, 256 << 10);
  const std::string& block = blocks[0];
  const BlockKey key = KeyOf(block);
  auto r = client->Reserve(key, block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->state, ReserveState::kReserved);
  const auto bytes = AsBytes(block);
  ASSERT_TRUE(client->WriteReserved(*r, 0, bytes.first(1000)).ok());
  // Half-written: nobody sees it, and a second writer is told it is in progress.
  EXPECT_EQ(client->GetBlock(key).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->Reserve(key, block.size())->state, ReserveState::kInProgress);
  ASSERT_TRUE(client->WriteReserved(*r, 1000, bytes.subspan(1000)).ok());
  ASSERT_TRUE(client->Commit(*r).ok());
  EXPECT_EQ(*client->GetBlock(key), block);

  // Aborted: nothing visible, the key is free again.
  const BlockKey key2 = KeyOf(blocks[1]);
  auto r2 = *client->Reserve(key2, blocks[1].size());
  ASSERT_TRUE(client->WriteReserved(r2, 0, AsBytes(blocks[1])).ok());
  ASSERT_TRUE(client->Abort(r2).ok());
  EXPECT_EQ(client->GetBlock(key2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->Commit(r2).code(), absl::StatusCode::kNotFound);
  // Bytes that do not match the reserved key are refused at commit.
  auto r3 = *client->Reserve(key2, block.size());
  ASSERT_TRUE(client->WriteReserved(r3, 0, bytes).ok());
  EXPECT_EQ(client->Commit(r3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->GetBlock(key2).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreServiceTest, ConcurrentClientsWriteAndReadTheSameBlocks) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  const auto blocks = Blocks(91, 24, 64 << 10);
  constexpr int kClients = 4;
  std::vector<std::unique_ptr<StoreClient>> clients;
  for (int c = 0; c < kClients; ++c) clients.push_back(ConnectClient(*service, GetParam()));
  std::atomic<int> stored{0}, failures{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      // Everyone writes every block (racing), then reads every block.
      for (size_t i = 0; i < blocks.size(); ++i) {
        const std::string& b = blocks[(i + static_cast<size_t>(c) * 5) % blocks.size()];
        auto r = clients[c]->Put(AsBytes(b));
        if (!r.ok()) {
          ADD_FAILURE() << r.status();
          ++failures;
        } else if (*r == PutResult::kStored) {
          ++stored;
        }
      }
      std::string out(1 << 20, '\0');
      for (int round = 0; round < 3; ++round) {
        for (const std::string& b : blocks) {
          // A racing writer may still be committing the block: retry briefly.
          absl::StatusOr<uint64_t> n;
          for (int attempt = 0; attempt < 100; ++attempt) {
            n = clients[c]->Get(KeyOf(b), testing::AsWritable(out));
            if (n.ok() || n.status().code() != absl::StatusCode::kNotFound) break;
            absl::SleepFor(absl::Milliseconds(5));
          }
          if (!n.ok() || out.compare(0, b.size(), b) != 0) {
            ADD_FAILURE() << "client " << c << ": " << n.status();
            ++failures;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stored.load(), static_cast<int>(blocks.size())) << "each block stored exactly once";
  EXPECT_EQ(service->store().stats().memory_blocks, blocks.size());
  clients.clear();  // a closing client releases the leases of its last reads
  EXPECT_EQ(service->store().stats().active_read_leases, 0u);
}

INSTANTIATE_TEST_SUITE_P(DataPaths, StoreServiceTest,
                         ::testing::Values(DataPath::kUcx, DataPath::kRpc), [](const auto& info) {
                           return info.param == DataPath::kUcx ? std::string("Ucx")
                                                               : std::string("Rpc");
                         });

TEST(StoreServiceLeaseTest, LeasesOfVanishedClientsExpire) {
  ServiceOptions o;
  o.store.lease_ttl = absl::Milliseconds(200);
  auto service = StartService(o);
  ASSERT_NE(service, nullptr);
  auto client = ConnectClient(*service, DataPath::kAuto);
  const auto blocks = Blocks(101, 2, 128 << 10);
  ASSERT_TRUE(client->Put(AsBytes(blocks[1])).ok());
  auto r = *client->Reserve(KeyOf(blocks[0]), blocks[0].size());
  // A read lease that nobody releases, through the raw protocol.
  auto rpc = *transport::rpc::RpcClient::Create(
      {.port = service->port(), .handshake = CachestoreHandshake("test", "raw")});
  OpenReadRequest open;
  ToProto(KeyOf(blocks[1]), open.add_keys());
  OpenReadResponse opened;
  ASSERT_TRUE(
      transport::rpc::CallProto(*rpc, kOpenReadMethod, open, &opened, {.timeout = absl::Seconds(5)})
          .ok());
  ASSERT_EQ(opened.grants_size(), 1);
  EXPECT_NE(opened.grants(0).lease(), 0u);
  EXPECT_EQ(service->store().stats().active_read_leases, 1u);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (service->store().stats().expiries_read + service->store().stats().expiries_reservation <
             2 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const StoreStats s = service->store().stats();
  EXPECT_EQ(s.expiries_reservation, 1u);
  EXPECT_EQ(s.expiries_read, 1u);
  EXPECT_EQ(s.active_read_leases, 0u);
  EXPECT_EQ(client->Commit(r).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*client->Put(AsBytes(blocks[0])), PutResult::kStored) << "the key is free again";
  // The expiries show in /metrics.
  auto metrics = transport::http::HttpFetch("127.0.0.1", service->http_port(),
                                            {.target = "/metrics"}, absl::Seconds(5));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_NE(metrics->body.find("kvasir_cachestore_lease_expiries_total{kind=\"read\"} 1"),
            std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("kvasir_cachestore_lease_expiries_total{kind=\"reservation\"} 1"),
            std::string::npos);
}

TEST(StoreServiceLeaseTest, ReadLeasesAreReleasedOffTheReadPath) {
  auto service = StartService();  // leases last 30 s: nothing here waits for an expiry
  ASSERT_NE(service, nullptr);
  auto reader = ConnectClient(*service, DataPath::kUcx);
  auto other = ConnectClient(*service, DataPath::kAuto);
  ASSERT_NE(reader, nullptr);
  ASSERT_NE(other, nullptr);
  const auto blocks = Blocks(131, 3, 128 << 10);  // over the inline size: reads take leases
  for (const std::string& b : blocks) ASSERT_TRUE(reader->Put(AsBytes(b)).ok());
  std::string out(256 << 10, '\0');

  // Back-to-back reads: each open-read carries the release of the read before, so at most the
  // last read's lease is held, however fast the reads come.
  for (int i = 0; i < 30; ++i) {
    const std::string& b = blocks[i % blocks.size()];
    ASSERT_EQ(*reader->Get(KeyOf(b), testing::AsWritable(out)), b.size());
    ASSERT_LE(service->store().stats().active_read_leases, 1u) << "read " << i;
  }
  // The reader's next call of another kind sends the release first.
  auto stats = reader->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->active_read_leases(), 0u);

  // A reader that goes quiet releases on its own, long before the lease would expire: another
  // client can then remove the block.
  ASSERT_TRUE(reader->Get(KeyOf(blocks[0]), testing::AsWritable(out)).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (service->store().stats().active_read_leases > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(service->store().stats().active_read_leases, 0u);
  auto removed = other->Remove(std::vector<BlockKey>{KeyOf(blocks[0])});
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE((*removed)[0].ok()) << (*removed)[0];
  EXPECT_EQ(service->store().stats().expiries_read, 0u);
}

TEST(StoreServiceHttpTest, HealthAndMetrics) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  auto client = ConnectClient(*service, DataPath::kAuto);
  const auto blocks = Blocks(111, 2, 32 << 10);
  for (const std::string& b : blocks) ASSERT_TRUE(client->Put(AsBytes(b)).ok());
  ASSERT_TRUE(client->GetBlock(KeyOf(blocks[0])).ok());
  BlockKey missing = KeyOf(blocks[0]);
  missing.chunk_index = 1000;
  ASSERT_FALSE(client->GetBlock(missing).ok());
  auto health = transport::http::HttpFetch("127.0.0.1", service->http_port(), {.target = "/health"},
                                           absl::Seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, R"({"status":"ok"})");
  auto ready = transport::http::HttpFetch("127.0.0.1", service->http_port(), {.target = "/ready"},
                                          absl::Seconds(5));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->status, 200);
  EXPECT_NE(ready->body.find(R"("status":"ready")"), std::string::npos) << ready->body;
  EXPECT_NE(ready->body.find(R"("read_leases":0,"reservations":0)"), std::string::npos)
      << ready->body;
  auto metrics = transport::http::HttpFetch("127.0.0.1", service->http_port(),
                                            {.target = "/metrics"}, absl::Seconds(5));
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->status, 200);
  const std::string& m = metrics->body;
  uint64_t stored = 0;
  for (const std::string& b : blocks) stored += b.size();
  for (const std::string& line :
       {std::string("kvasir_cachestore_hits_total{op=\"get\"} 1"),
        std::string("kvasir_cachestore_misses_total{op=\"get\"} 1"),
        "kvasir_cachestore_stored_bytes{tier=\"memory\"} " + std::to_string(stored),
        "kvasir_cachestore_stored_blocks{tier=\"memory\"} " + std::to_string(blocks.size()),
        std::string("kvasir_cachestore_evictions_total{tier=\"memory\"} 0"),
        "kvasir_cachestore_transferred_bytes_total{direction=\"in\"} " + std::to_string(stored),
        std::string("kvasir_cachestore_checksum_failures_total 0"),
        std::string("kvasir_cachestore_throughput_bytes_per_second{direction=\"out\"}"),
        std::string("kvasir_cachestore_request_duration_seconds_count{op=\"put_inline\"}"),
        std::string("kvasir_build_info{service=\"cachestore\""),
        std::string("process_resident_memory_bytes ")}) {
    EXPECT_NE(m.find(line), std::string::npos) << line << "\n" << m;
  }
  auto missing_page = transport::http::HttpFetch("127.0.0.1", service->http_port(),
                                                 {.target = "/nope"}, absl::Seconds(5));
  ASSERT_TRUE(missing_page.ok());
  EXPECT_EQ(missing_page->status, 404);
}

TEST(StoreServiceInputTest, MalformedRequestsGetErrorsAndTheServiceCarriesOn) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  auto rpc = *transport::rpc::RpcClient::Create(
      {.port = service->port(), .handshake = CachestoreHandshake("test", "raw")});
  const transport::rpc::CallOptions opts{.timeout = absl::Seconds(5)};
  for (const char* method :
       {kLookupMethod, kLookupRunMethod, kReserveMethod, kWriteMethod, kCommitMethod, kAbortMethod,
        kPutInlineMethod, kOpenReadMethod, kReadMethod, kReleaseMethod, kPinMethod, kUnpinMethod,
        kRemoveMethod}) {
    auto r = rpc->Call(method, std::string("\xff\xff\xff\xff garbage", 12), opts);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << method << r.status();
  }
  // Well-formed but nonsensical.
  LookupRequest lookup;
  lookup.mutable_space()->set_layer_end(-3);
  EXPECT_EQ(rpc->Call(kLookupMethod, lookup.SerializeAsString(), opts).status().code(),
            absl::StatusCode::kInvalidArgument);
  ReadRequest read;
  read.set_lease(12345);
  read.set_length(1 << 30);
  EXPECT_EQ(rpc->Call(kReadMethod, read.SerializeAsString(), opts).status().code(),
            absl::StatusCode::kInvalidArgument);
  read.set_length(10);
  EXPECT_EQ(rpc->Call(kReadMethod, read.SerializeAsString(), opts).status().code(),
            absl::StatusCode::kNotFound);
  OpenReadRequest open;
  for (int i = 0; i <= kMaxBatchItems; ++i) open.add_release_leases(static_cast<uint64_t>(i) + 1);
  EXPECT_EQ(rpc->Call(kOpenReadMethod, open.SerializeAsString(), opts).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "more piggy-backed releases than a batch may carry";
  PutInlineRequest put;
  put.add_blocks("not a block");
  PutInlineResponse put_response;
  ASSERT_TRUE(transport::rpc::CallProto(*rpc, kPutInlineMethod, put, &put_response, opts).ok());
  EXPECT_EQ(put_response.statuses(0).code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  ReserveRequest reserve;
  ReserveItem* item = reserve.add_items();
  ToProto(KeyOf(Blocks(1, 1, 4096)[0]), item->mutable_key());
  item->set_size(1ull << 40);
  ReserveResponse reserved;
  ASSERT_TRUE(transport::rpc::CallProto(*rpc, kReserveMethod, reserve, &reserved, opts).ok());
  EXPECT_EQ(reserved.grants(0).status().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  // Still serving.
  auto client = ConnectClient(*service, DataPath::kAuto);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->Put(AsBytes(Blocks(2, 1, 4096)[0])).ok());
}

TEST(StoreServiceInputTest, ClientsWithADifferentPrefixHashAreRefused) {
  auto service = StartService();
  ASSERT_NE(service, nullptr);
  transport::rpc::HandshakeInfo wrong = CachestoreHandshake("test", "wrong");
  wrong.prefix_hash_test_vector ^= 1;
  auto rpc = *transport::rpc::RpcClient::Create({.port = service->port(), .handshake = wrong});
  EXPECT_EQ(rpc->WaitConnected(absl::Seconds(5)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StoreServiceInputTest, ConnectFailsWithinItsDeadline) {
  const absl::Time start = absl::Now();
  auto client = StoreClient::Connect({.port = 1, .connect_timeout = absl::Milliseconds(300)});
  EXPECT_FALSE(client.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

}  // namespace
}  // namespace kvasir::cachestore
