// kvasir-cachestore as a real process on loopback: concurrent clients, LRU eviction order, lease
// expiry of vanished clients, a corrupted block on disk detected and dropped (and counted in
// /metrics), kill -9 and restart with the disk tier (every committed block served byte for byte),
// graceful SIGTERM, deadlines against a stopped store, and a short run of the bench.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cachestore/bench.h"
#include "cachestore/client.h"
#include "cachestore/disk_tier.h"
#include "cachestore/protocol.h"
#include "gtest/gtest.h"
#include "tests/cachestore/test_blocks.h"
#include "transport/child_process.h"
#include "transport/http/client.h"
#include "transport/rpc/client.h"

namespace kvasir::cachestore {
namespace {

using testing::AsBytes;
using testing::Blocks;
using testing::KeyOf;
using transport::ChildProcess;

struct StoreProcess {
  ChildProcess process;
  uint16_t port = 0;
  uint16_t http_port = 0;
};

// Starts kvasir-cachestore with `args` and waits for its "PORT p HTTP h" line.
StoreProcess StartStore(std::vector<std::string> args) {
  args.insert(args.begin(), KVASIR_CACHESTORE_BIN);
  bool has_port = false;
  for (const std::string& a : args) has_port |= a.rfind("--port", 0) == 0;
  if (!has_port) args.push_back("--port=0");
  args.push_back("--http-port=0");
  auto process = ChildProcess::Spawn(args);
  EXPECT_TRUE(process.ok()) << process.status();
  auto line = process->ReadLine(absl::Seconds(30));
  EXPECT_TRUE(line.ok()) << line.status();
  std::vector<std::string> words = absl::StrSplit(line.ok() ? *line : "", ' ');
  uint32_t port = 0, http = 0;
  EXPECT_TRUE(words.size() == 4 && words[0] == "PORT" && absl::SimpleAtoi(words[1], &port) &&
              absl::SimpleAtoi(words[3], &http))
      << (line.ok() ? *line : "");
  return StoreProcess{*std::move(process), static_cast<uint16_t>(port),
                      static_cast<uint16_t>(http)};
}

std::unique_ptr<StoreClient> Connect(uint16_t port, DataPath path = DataPath::kAuto) {
  auto client = StoreClient::Connect({.port = port,
                                      .timeout = absl::Seconds(10),
                                      .connect_timeout = absl::Seconds(10),
                                      .data_path = path});
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// The value of one sample in /metrics (e.g. `kvasir_cachestore_checksum_failures_total`), or -1.
double Metric(uint16_t http_port, const std::string& sample) {
  auto r =
      transport::http::HttpFetch("127.0.0.1", http_port, {.target = "/metrics"}, absl::Seconds(5));
  if (!r.ok() || r->status != 200) return -1;
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    if (line.size() > sample.size() && line.substr(0, sample.size()) == sample &&
        line[sample.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(sample.size() + 1), &v)) return v;
    }
  }
  return -1;
}

// Polls until Metric(...) == want or the deadline passes; returns the last value.
double WaitForMetric(uint16_t http_port, const std::string& sample, double want,
                     absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  double v = -1;
  while (absl::Now() < deadline) {
    v = Metric(http_port, sample);
    if (v == want) break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  return v;
}

std::string TempDir(const std::string& name) {
  std::string dir =
      ::testing::TempDir() + "/kvasir_cachestore_mp_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

// SIGSTOPs the process and waits until the kernel reports it stopped (kill() returns earlier).
void StopProcess(ChildProcess& process) {
  process.Signal(SIGSTOP);
  const std::string stat = "/proc/" + std::to_string(process.pid()) + "/stat";
  for (int i = 0; i < 400; ++i) {
    std::ifstream in(stat);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t paren = text.rfind(')');
    if (paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'T') return;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ADD_FAILURE() << "store did not stop";
}

void FlipByte(const std::string& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekg(offset);
  char c = 0;
  f.get(c);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ 0x5a));
}

TEST(CachestoreProcessTest, HelpAndBadFlags) {
  auto help = ChildProcess::Spawn({KVASIR_CACHESTORE_BIN, "--help"});
  ASSERT_TRUE(help.ok());
  auto first = help->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->rfind("usage: kvasir-cachestore", 0), 0u) << *first;
  EXPECT_EQ(*help->Wait(absl::Seconds(10)), 0);
  auto bad = ChildProcess::Spawn({KVASIR_CACHESTORE_BIN, "--capacity=lots"});
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad->Wait(absl::Seconds(10)), 2);
}

TEST(CachestoreProcessTest, ConcurrentClientsOverUcxAndRpc) {
  StoreProcess store = StartStore({"--capacity=128MiB", "--arena-bytes=32MiB"});
  constexpr int kClients = 4;
  std::vector<std::vector<std::string>> mine(kClients);
  for (int c = 0; c < kClients; ++c) {
    for (auto size : {4096ull, 256ull << 10, 2ull << 20}) {
      for (std::string& b : Blocks(1000 + c * 10 + size / 4096, 3, size, c + 1)) {
        mine[c].push_back(std::move(b));
      }
    }
  }
  std::vector<std::unique_ptr<StoreClient>> clients;
  for (int c = 0; c < kClients; ++c) {
    // One client uses the control-plane fallback; the others UCX.
    clients.push_back(Connect(store.port, c == kClients - 1 ? DataPath::kRpc : DataPath::kUcx));
    ASSERT_NE(clients.back(), nullptr);
  }
  std::atomic<int> put_done{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      std::vector<std::span<const std::byte>> spans;
      for (const std::string& b : mine[c]) spans.push_back(AsBytes(b));
      auto put = clients[c]->PutBatch(spans);
      ASSERT_TRUE(put.ok()) << put.status();
      for (const auto& r : *put) {
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(*r, PutResult::kStored);
      }
      ++put_done;
      while (put_done.load() < kClients) absl::SleepFor(absl::Milliseconds(1));
      // Then everyone reads everyone's blocks.
      auto buffer = clients[c]->AllocateBuffer(4 << 20);
      ASSERT_TRUE(buffer.ok());
      for (int other = 0; other < kClients; ++other) {
        for (const std::string& b : mine[other]) {
          auto n = clients[c]->Get(KeyOf(b), *buffer);
          ASSERT_TRUE(n.ok()) << "client " << c << ": " << n.status();
          ASSERT_EQ(*n, b.size());
          ASSERT_EQ(std::memcmp(buffer->data(), b.data(), b.size()), 0);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  size_t total = 0;
  for (const auto& m : mine) total += m.size();
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_stored_blocks{tier=\"memory\"}"),
            static_cast<double>(total));
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_hits_total{op=\"get\"}"),
            static_cast<double>(total * kClients));
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_leases{kind=\"read\"}"), 0);
}

TEST(CachestoreProcessTest, EvictsInLruOrder) {
  constexpr uint64_t kBlock = 64 << 10;
  StoreProcess store =
      StartStore({"--capacity=256KiB", "--arena-bytes=256KiB", "--max-block-bytes=64KiB"});
  auto client = Connect(store.port);
  ASSERT_NE(client, nullptr);
  const auto blocks = Blocks(2000, 6, kBlock);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(*client->Put(AsBytes(blocks[i])), PutResult::kStored);
  ASSERT_TRUE(client->GetBlock(KeyOf(blocks[0])).ok());             // 0 becomes the most recent
  ASSERT_TRUE(client->GetBlock(KeyOf(blocks[2])).ok());             // then 2
  ASSERT_EQ(*client->Put(AsBytes(blocks[4])), PutResult::kStored);  // evicts 1
  ASSERT_EQ(*client->Put(AsBytes(blocks[5])), PutResult::kStored);  // evicts 3
  EXPECT_EQ(client->GetBlock(KeyOf(blocks[1])).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->GetBlock(KeyOf(blocks[3])).status().code(), absl::StatusCode::kNotFound);
  for (int i : {0, 2, 4, 5}) EXPECT_EQ(*client->GetBlock(KeyOf(blocks[i])), blocks[i]) << i;
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_evictions_total{tier=\"memory\"}"), 2);
  // A pinned block is never the victim: pin the least recent (0), add one more: 2 goes.
  const BlockKey pin[] = {KeyOf(blocks[0])};
  ASSERT_TRUE((*client->Pin(pin))[0].ok());
  ASSERT_EQ(*client->Put(AsBytes(blocks[1])), PutResult::kStored);
  EXPECT_TRUE(client->GetBlock(KeyOf(blocks[0])).ok());
  EXPECT_EQ(client->GetBlock(KeyOf(blocks[2])).status().code(), absl::StatusCode::kNotFound);
}

TEST(CachestoreProcessTest, LeasesOfVanishedClientsExpire) {
  StoreProcess store = StartStore({"--lease-ttl=300ms", "--capacity=8MiB"});
  const auto blocks = Blocks(3000, 2, 256 << 10);
  auto client = Connect(store.port);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Put(AsBytes(blocks[1])).ok());
  LeaseId reserved = 0;
  uint64_t granted_instance = 0;
  {
    // A client that reserves, opens a read and goes away without committing or releasing.
    auto rpc = *transport::rpc::RpcClient::Create(
        {.port = store.port, .handshake = CachestoreHandshake("test", "vanishing")});
    ReserveRequest reserve;
    ReserveItem* item = reserve.add_items();
    ToProto(KeyOf(blocks[0]), item->mutable_key());
    item->set_size(blocks[0].size());
    ReserveResponse granted;
    ASSERT_TRUE(transport::rpc::CallProto(*rpc, kReserveMethod, reserve, &granted,
                                          {.timeout = absl::Seconds(5)})
                    .ok());
    ASSERT_EQ(granted.grants(0).state(), RESERVE_STATE_RESERVED);
    reserved = granted.grants(0).lease();
    granted_instance = granted.instance();
    OpenReadRequest open;
    ToProto(KeyOf(blocks[1]), open.add_keys());
    OpenReadResponse opened;
    ASSERT_TRUE(transport::rpc::CallProto(*rpc, kOpenReadMethod, open, &opened,
                                          {.timeout = absl::Seconds(5)})
                    .ok());
    ASSERT_NE(opened.grants(0).lease(), 0u);
    EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_leases{kind=\"read\"}"), 1);
    EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_leases{kind=\"reservation\"}"), 1);
  }
  EXPECT_EQ(WaitForMetric(store.http_port,
                          "kvasir_cachestore_lease_expiries_total{kind=\"reservation\"}", 1),
            1);
  EXPECT_EQ(
      WaitForMetric(store.http_port, "kvasir_cachestore_lease_expiries_total{kind=\"read\"}", 1),
      1);
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_leases{kind=\"read\"}"), 0);
  // The reservation is gone (a late commit fails), and the block can be written anew.
  ClientReservation stale{
      ReserveState::kReserved, KeyOf(blocks[0]), blocks[0].size(), reserved, 0, 0,
      granted_instance};
  EXPECT_EQ(client->Commit(stale).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*client->Put(AsBytes(blocks[0])), PutResult::kStored);
  EXPECT_EQ(*client->GetBlock(KeyOf(blocks[0])), blocks[0]);
  // Quarantined memory comes back after one more TTL.
  EXPECT_EQ(WaitForMetric(store.http_port, "kvasir_cachestore_reserved_bytes", 0), 0);
}

TEST(CachestoreProcessTest, CorruptedDiskBlockIsDetectedDroppedAndCounted) {
  const std::string dir = TempDir("corrupt");
  // Memory for two blocks: the others live on disk only.
  constexpr uint64_t kBlock = 128 << 10;
  std::vector<std::string> args = {"--capacity=256KiB", "--arena-bytes=256KiB",
                                   "--max-block-bytes=128KiB", "--disk-dir=" + dir,
                                   "--disk-fsync=false"};
  const auto blocks = Blocks(4000, 5, kBlock);
  auto disk = *DiskTier::Open({.dir = dir});
  {
    StoreProcess store = StartStore(args);
    auto client = Connect(store.port);
    ASSERT_NE(client, nullptr);
    for (const std::string& b : blocks) ASSERT_TRUE(client->Put(AsBytes(b)).ok());
    // Blocks 0..2 were evicted from memory; corrupt block 1 on disk while the store runs.
    FlipByte(disk->PathOf(KeyOf(blocks[1])), kBlock - 64);
    const absl::Status s = client->GetBlock(KeyOf(blocks[1])).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_checksum_failures_total"), 1);
    EXPECT_FALSE(std::filesystem::exists(disk->PathOf(KeyOf(blocks[1])))) << "dropped";
    EXPECT_EQ(client->GetBlock(KeyOf(blocks[1])).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(*client->GetBlock(KeyOf(blocks[0])), blocks[0]);
    store.process.Signal(SIGTERM);
    EXPECT_EQ(*store.process.Wait(absl::Seconds(10)), 0);
  }
  // Corrupt block 3 (payload) and block 4 (header) while the store is down.
  FlipByte(disk->PathOf(KeyOf(blocks[3])), kBlock - 64);
  FlipByte(disk->PathOf(KeyOf(blocks[4])), 40);
  StoreProcess store = StartStore(args);
  auto client = Connect(store.port);
  ASSERT_NE(client, nullptr);
  // The header is checked by the start-up scan, the payload on read.
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_checksum_failures_total"), 1);
  EXPECT_EQ(client->GetBlock(KeyOf(blocks[3])).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(client->GetBlock(KeyOf(blocks[4])).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Metric(store.http_port, "kvasir_cachestore_checksum_failures_total"), 2);
  EXPECT_EQ(*client->GetBlock(KeyOf(blocks[0])), blocks[0]);
  EXPECT_EQ(*client->GetBlock(KeyOf(blocks[2])), blocks[2]);
  const uint64_t h[] = {4000};
  EXPECT_EQ(client->Lookup(KeyOf(blocks[0]).space, h)->matched_blocks, 0) << "snapshot broken";
  std::filesystem::remove_all(dir);
}

TEST(CachestoreProcessTest, KillNineAndRestartServesEveryCommittedBlock) {
  const std::string dir = TempDir("restart");
  std::vector<std::string> args = {"--capacity=64MiB", "--arena-bytes=32MiB", "--disk-dir=" + dir};
  StoreProcess store = StartStore(args);
  const uint16_t port = store.port;
  std::vector<std::string> committed;
  for (auto size : {4096ull, 64ull << 10, 1ull << 20}) {
    for (std::string& b : Blocks(5000 + size, 4, size, size)) committed.push_back(std::move(b));
  }
  const auto pending = Blocks(5999, 1, 256 << 10);
  auto client = Connect(port);
  ASSERT_NE(client, nullptr);
  std::vector<std::span<const std::byte>> spans;
  for (const std::string& b : committed) spans.push_back(AsBytes(b));
  auto put = client->PutBatch(spans);
  ASSERT_TRUE(put.ok()) << put.status();
  for (const auto& r : *put) ASSERT_TRUE(r.ok()) << r.status();
  // A block written in full but not committed when the store dies.
  auto r = client->Reserve(KeyOf(pending[0]), pending[0].size());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(client->WriteReserved(*r, 0, AsBytes(pending[0])).ok());

  store.process.Signal(SIGKILL);
  EXPECT_EQ(*store.process.Wait(absl::Seconds(10)), 128 + SIGKILL);
  args.push_back("--port=" + std::to_string(port));
  StoreProcess restarted = StartStore(args);
  ASSERT_EQ(restarted.port, port);
  EXPECT_EQ(Metric(restarted.http_port, "kvasir_cachestore_stored_blocks{tier=\"disk\"}"),
            static_cast<double>(committed.size()));
  auto fresh = Connect(port);
  ASSERT_NE(fresh, nullptr);
  for (const std::string& b : committed) {
    auto got = fresh->GetBlock(KeyOf(b));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == b) << "block differs after the restart";
  }
  EXPECT_EQ(fresh->GetBlock(KeyOf(pending[0])).status().code(), absl::StatusCode::kNotFound)
      << "an uncommitted block never becomes visible";
  const uint64_t h[] = {5000 + (1ull << 20)};
  EXPECT_EQ(fresh->Lookup(KeyOf(committed.back()).space, h)->matched_blocks, 1);
  // The old client reconnects by itself and sets its session up again.
  absl::StatusOr<std::string> again = absl::UnavailableError("not tried");
  for (int attempt = 0; attempt < 50 && !again.ok(); ++attempt) {
    again = client->GetBlock(KeyOf(committed[5]), 64 << 20, absl::Seconds(2));
    if (!again.ok()) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, committed[5]);
  // Its reservation from before the crash names the old process's memory: refused, not written.
  EXPECT_EQ(client->WriteReserved(*r, 0, AsBytes(pending[0])).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Commit(*r).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*client->Put(AsBytes(pending[0])), PutResult::kStored);
  std::filesystem::remove_all(dir);
}

TEST(CachestoreProcessTest, SigtermStopsGracefullyAndDeadlinesHoldAgainstAStoppedStore) {
  StoreProcess store = StartStore({"--capacity=8MiB"});
  auto health = transport::http::HttpFetch("127.0.0.1", store.http_port, {.target = "/health"},
                                           absl::Seconds(5));
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 200);
  auto client = Connect(store.port);
  ASSERT_NE(client, nullptr);
  const auto blocks = Blocks(6000, 1, 512 << 10);
  ASSERT_TRUE(client->Put(AsBytes(blocks[0])).ok());

  StopProcess(store.process);
  absl::Time start = absl::Now();
  auto stalled = client->GetBlock(KeyOf(blocks[0]), 1 << 20, absl::Milliseconds(300));
  EXPECT_EQ(stalled.status().code(), absl::StatusCode::kDeadlineExceeded) << stalled.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  start = absl::Now();
  auto put = client->Put(AsBytes(Blocks(6001, 1, 512 << 10)[0]), absl::Milliseconds(300));
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded) << put.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  store.process.Signal(SIGCONT);
  EXPECT_EQ(*client->GetBlock(KeyOf(blocks[0])), blocks[0]);

  store.process.Signal(SIGTERM);
  start = absl::Now();
  EXPECT_EQ(*store.process.Wait(absl::Seconds(10)), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  start = absl::Now();
  auto gone = client->GetBlock(KeyOf(blocks[0]), 1 << 20, absl::Milliseconds(500));
  EXPECT_FALSE(gone.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST(CachestoreProcessTest, BenchRunsAgainstItsOwnStore) {
  CachestoreBenchOptions o;
  o.store_binary = KVASIR_CACHESTORE_BIN;
  o.sizes = {64 << 10, 1 << 20};
  o.clients = {1, 2};
  o.time_per_point = absl::Milliseconds(50);
  o.bytes_per_point = 4 << 20;
  o.small_time = absl::Milliseconds(100);
  o.small_blocks_per_client = 64;
  auto r = RunCachestoreBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json j = CachestoreBenchJson(*r);
  ASSERT_EQ(j["put"].size(), 4u);
  ASSERT_EQ(j["get"].size(), 4u);
  ASSERT_EQ(j["small_ops"].size(), 4u);
  for (const char* key : {"put", "get"}) {
    for (const auto& p : j[key]) {
      EXPECT_GT(p["gbps"].get<double>(), 0) << key;
      EXPECT_TRUE(p["bytes"] == 65536 || p["bytes"] == 1048576);
    }
  }
  for (const auto& p : j["small_ops"]) {
    EXPECT_GT(p["ops_per_s"].get<double>(), 0);
    EXPECT_GT(p["p99_us"].get<double>(), 0);
    EXPECT_GE(p["p99_us"].get<double>(), p["p50_us"].get<double>());
  }
  EXPECT_EQ(j["raw_ucx_get"].size(), r->data_path == "rpc" ? 0u : 4u);
  EXPECT_NE(CachestoreBenchTable(*r).find("get/raw"), std::string::npos);
}

}  // namespace
}  // namespace kvasir::cachestore
