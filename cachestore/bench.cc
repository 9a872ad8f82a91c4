// The cachestore bench (see bench.h).
#include "cachestore/bench.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "cachestore/protocol.h"
#include "cachestore/synthetic_blocks.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "transport/child_process.h"

namespace kvasir::cachestore {
namespace {

using transport::ChildProcess;
using transport::FindSiblingBinary;
using transport::FreeLoopbackPort;

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// Runs fn(client index) on one thread per client, all released together; returns the wall time
// from the release until the last one finished, and the first error.
template <typename Fn>
absl::StatusOr<absl::Duration> RunConcurrently(int clients, Fn fn) {
  absl::Notification go;
  absl::Mutex mu;
  absl::Status first;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      go.WaitForNotification();
      absl::Status s = fn(c);
      if (!s.ok()) {
        absl::MutexLock lock(&mu);
        if (first.ok()) first = s;
      }
    });
  }
  const absl::Time start = absl::Now();
  go.Notify();
  for (std::thread& t : threads) t.join();
  const absl::Duration wall = absl::Now() - start;
  if (!first.ok()) return first;
  return wall;
}

struct Store {
  std::optional<ChildProcess> process;  // when the bench started it
  std::string host;
  uint16_t port = 0;
};

absl::StatusOr<Store> StartOrFindStore(const CachestoreBenchOptions& o) {
  Store store;
  if (!o.store.empty()) {
    const size_t colon = o.store.rfind(':');
    uint32_t port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(o.store.substr(colon + 1), &port) || port == 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--store must be HOST:PORT, got '", o.store, "'"));
    }
    store.host = o.store.substr(0, colon);
    store.port = static_cast<uint16_t>(port);
    return store;
  }
  std::vector<std::string> argv = {FindSiblingBinary(o.store_binary, "kvasir-cachestore"),
                                   "--port=0",
                                   "--no-http",
                                   "--capacity=1GiB",
                                   "--lease-ttl=60s",
                                   "--name=bench-store"};
  if (!o.ucx_tls.empty()) argv.push_back("--ucx-tls=" + o.ucx_tls);
  if (o.data_path == DataPath::kRpc) argv.push_back("--ucx=off");
  KVASIR_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(argv));
  KVASIR_ASSIGN_OR_RETURN(std::string line, child.ReadLine(absl::Seconds(30)));
  uint32_t port = 0;
  std::vector<std::string> words = absl::StrSplit(line, ' ');
  if (words.size() < 2 || words[0] != "PORT" || !absl::SimpleAtoi(words[1], &port) || port == 0 ||
      port > 65535) {
    return absl::InternalError(
        absl::StrCat("kvasir-cachestore printed '", line, "' instead of its port"));
  }
  store.process = std::move(child);
  store.host = "127.0.0.1";
  store.port = static_cast<uint16_t>(port);
  return store;
}

absl::StatusOr<std::vector<std::unique_ptr<StoreClient>>> ConnectClients(
    const CachestoreBenchOptions& o, const Store& store, int n) {
  std::vector<std::unique_ptr<StoreClient>> clients;
  for (int c = 0; c < n; ++c) {
    ClientOptions co;
    co.host = store.host;
    co.port = store.port;
    co.name = absl::StrCat("bench-", c);
    co.timeout = absl::Seconds(30);
    co.connect_timeout = absl::Seconds(10);
    co.data_path = o.data_path;
    co.ucx_tls = o.ucx_tls;
    co.verify_reads = o.verify_reads;
    KVASIR_ASSIGN_OR_RETURN(auto client, StoreClient::Connect(co));
    clients.push_back(std::move(client));
  }
  return clients;
}

absl::Status RemoveAll(StoreClient& client, const std::vector<BlockKey>& keys) {
  for (size_t i = 0; i < keys.size(); i += kMaxBatchItems) {
    const size_t n = std::min<size_t>(kMaxBatchItems, keys.size() - i);
    KVASIR_ASSIGN_OR_RETURN(auto statuses,
                            client.Remove(std::span<const BlockKey>(keys).subspan(i, n)));
    for (const absl::Status& s : statuses) {
      if (!s.ok() && s.code() != absl::StatusCode::kNotFound) return s;
    }
  }
  return absl::OkStatus();
}

// One (size, clients) point: put rounds, get rounds, raw UCX get rounds.
absl::Status MeasureBandwidth(const CachestoreBenchOptions& o,
                              std::vector<std::unique_ptr<StoreClient>>& clients, uint64_t size,
                              uint64_t prefix_hash, CachestoreBenchResult& result) {
  const int n = static_cast<int>(clients.size());
  SyntheticSnapshotOptions so;
  so.prefix_hash = prefix_hash;
  so.block_bytes = size;
  so.payload_bytes = std::max<uint64_t>(o.bytes_per_point, 2ull * n * size);
  so.n_layer = 4;
  so.n_head_kv = 4;
  so.head_dim = 128;
  so.seed = prefix_hash;
  KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> blocks, MakeSyntheticSnapshot(so));
  while (!blocks.empty() && blocks.back().size() != size) blocks.pop_back();
  const size_t per_client = blocks.size() / static_cast<size_t>(n);
  if (per_client == 0) return absl::InternalError("synthetic snapshot too small");
  std::vector<std::vector<std::span<const std::byte>>> mine(n);
  std::vector<std::vector<BlockKey>> keys(n);
  for (int c = 0; c < n; ++c) {
    for (size_t j = 0; j < per_client; ++j) {
      const std::string& b = blocks[c * per_client + j];
      mine[c].push_back(Bytes(b));
      KVASIR_ASSIGN_OR_RETURN(auto parsed, ParseBlock(b));
      keys[c].push_back(parsed.first);
    }
  }
  const uint64_t group =
      std::clamp<uint64_t>(clients[0]->options().batch_bytes / size, 1, 64);  // blocks per call
  std::vector<std::span<std::byte>> buffers(n);
  for (int c = 0; c < n; ++c) {
    KVASIR_ASSIGN_OR_RETURN(buffers[c], clients[c]->AllocateBuffer(group * size));
  }

  // Put: rounds of every client writing all of its blocks; blocks are removed between rounds.
  // Each measurement is the median of several rounds or slices: the machine may be shared, and
  // the median ignores the rounds that another process's burst slowed down.
  std::vector<double> put_rates;
  absl::Duration put_time;
  // Round 0 warms up (first touch of the store's memory, UCX lanes and keys) and is not counted.
  for (int round = 0; round < 3 || put_time < o.time_per_point; ++round) {
    if (round > 0) {
      for (int c = 0; c < n; ++c) KVASIR_RETURN_IF_ERROR(RemoveAll(*clients[c], keys[c]));
    }
    KVASIR_ASSIGN_OR_RETURN(absl::Duration wall, RunConcurrently(n, [&](int c) -> absl::Status {
                              KVASIR_ASSIGN_OR_RETURN(auto results, clients[c]->PutBatch(mine[c]));
                              for (const auto& r : results) {
                                if (!r.ok()) return Annotate(r.status(), "bench put");
                                if (*r != PutResult::kStored)
                                  return absl::InternalError("bench put: block not stored");
                              }
                              return absl::OkStatus();
                            }));
    if (round == 0) continue;
    put_time += wall;
    put_rates.push_back(static_cast<double>(n * per_client * size) / absl::ToDoubleSeconds(wall) /
                        1e9);
    if (round > 50) break;
  }
  result.put.push_back({size, n, Percentile(put_rates, 0.5)});

  // Get through the store, and raw UCX gets of the same sizes and batch shape from the store's
  // arena on the same endpoints, in alternating slices so that both see the same machine load.
  const bool raw_too = clients[0]->using_ucx();
  constexpr int kSlices = 10;
  const absl::Duration slice = o.time_per_point / kSlices;
  std::vector<size_t> next(n, 0);
  std::vector<uint64_t> raw_slot(n, 0);
  std::vector<double> get_rates, raw_rates;
  for (int s = -1; s < kSlices; ++s) {  // slice -1 warms up and is not counted
    std::atomic<uint64_t> moved{0};
    KVASIR_ASSIGN_OR_RETURN(
        absl::Duration wall, RunConcurrently(n, [&](int c) -> absl::Status {
          std::vector<std::span<std::byte>> outs(group);
          for (uint64_t j = 0; j < group; ++j) outs[j] = buffers[c].subspan(j * size, size);
          const absl::Time start = absl::Now();
          do {
            const size_t count = std::min<size_t>(group, per_client - next[c]);
            KVASIR_ASSIGN_OR_RETURN(
                auto results,
                clients[c]->GetBatch(std::span<const BlockKey>(keys[c]).subspan(next[c], count),
                                     std::span<const std::span<std::byte>>(outs).first(count)));
            for (const auto& r : results) {
              if (!r.ok()) return Annotate(r.status(), "bench get");
            }
            moved.fetch_add(count * size);
            next[c] = (next[c] + count) % per_client;
          } while (absl::Now() - start < slice);
          return absl::OkStatus();
        }));
    if (s >= 0) {
      get_rates.push_back(static_cast<double>(moved.load()) / absl::ToDoubleSeconds(wall) / 1e9);
    }
    if (!raw_too) continue;
    moved = 0;
    KVASIR_ASSIGN_OR_RETURN(
        wall, RunConcurrently(n, [&](int c) -> absl::Status {
          const std::vector<uint64_t> arenas = clients[c]->arena_sizes();
          if (arenas.empty()) return absl::FailedPreconditionError("no UCX arenas");
          // The same footprint as the store's blocks (which sit from the arena's start once earlier
          // points removed theirs): memory that was written, so no first-touch faults on either
          // side.
          const uint64_t arena_slots =
              std::max<uint64_t>(1, std::min<uint64_t>(arenas[0], n * per_client * size) / size);
          std::vector<transport::RmaOp> ops(group);
          const absl::Time start = absl::Now();
          do {
            for (uint64_t j = 0; j < group; ++j) {
              ops[j] = {buffers[c].subspan(j * size, size),
                        ((raw_slot[c] + c * group + j) % arena_slots) * size};
            }
            KVASIR_RETURN_IF_ERROR(clients[c]->RawArenaGet(0, ops, absl::Seconds(30)));
            moved.fetch_add(group * size);
            raw_slot[c] += group;
          } while (absl::Now() - start < slice);
          return absl::OkStatus();
        }));
    if (s >= 0) {
      raw_rates.push_back(static_cast<double>(moved.load()) / absl::ToDoubleSeconds(wall) / 1e9);
    }
  }
  result.get.push_back({size, n, Percentile(get_rates, 0.5)});
  if (raw_too) {
    result.raw_get.push_back({size, n, Percentile(raw_rates, 0.5)});
  }
  for (int c = 0; c < n; ++c) KVASIR_RETURN_IF_ERROR(RemoveAll(*clients[c], keys[c]));
  return absl::OkStatus();
}

absl::Status MeasureSmallOps(const CachestoreBenchOptions& o,
                             std::vector<std::unique_ptr<StoreClient>>& clients,
                             uint64_t prefix_hash, CachestoreBenchResult& result) {
  const int n = static_cast<int>(clients.size());
  SyntheticSnapshotOptions so;
  so.prefix_hash = prefix_hash;
  so.block_bytes = o.small_bytes;
  so.payload_bytes = static_cast<uint64_t>(n) * o.small_blocks_per_client * o.small_bytes;
  so.n_layer = 2;
  so.n_head_kv = 2;
  so.head_dim = 64;
  so.seed = prefix_hash;
  KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> blocks, MakeSyntheticSnapshot(so));
  while (!blocks.empty() && blocks.back().size() != o.small_bytes) blocks.pop_back();
  const size_t per_client = blocks.size() / static_cast<size_t>(n);
  if (per_client == 0) return absl::InternalError("synthetic snapshot too small");
  std::vector<std::vector<BlockKey>> keys(n);
  for (int c = 0; c < n; ++c) {
    for (size_t j = 0; j < per_client; ++j) {
      KVASIR_ASSIGN_OR_RETURN(auto parsed, ParseBlock(blocks[c * per_client + j]));
      keys[c].push_back(parsed.first);
    }
  }
  std::vector<std::vector<double>> latencies(n);
  std::vector<size_t> stored(n, 0);
  KVASIR_ASSIGN_OR_RETURN(
      absl::Duration put_wall, RunConcurrently(n, [&](int c) -> absl::Status {
        const absl::Time start = absl::Now();
        for (size_t j = 0; j < per_client && absl::Now() - start < o.small_time; ++j) {
          const absl::Time t0 = absl::Now();
          KVASIR_ASSIGN_OR_RETURN(PutResult r, clients[c]->Put(Bytes(blocks[c * per_client + j])));
          latencies[c].push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
          if (r != PutResult::kStored) return absl::InternalError("bench put: block not stored");
          stored[c] = j + 1;
        }
        return absl::OkStatus();
      }));
  auto summarize = [&](const char* op, absl::Duration wall) {
    std::vector<double> all;
    for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
    const double ops = static_cast<double>(all.size());
    result.small_ops.push_back(
        {op, n, ops / absl::ToDoubleSeconds(wall), Percentile(all, 0.50), Percentile(all, 0.99)});
    for (auto& l : latencies) l.clear();
  };
  summarize("put", put_wall);

  std::vector<std::span<std::byte>> buffers(n);
  for (int c = 0; c < n; ++c) {
    KVASIR_ASSIGN_OR_RETURN(buffers[c], clients[c]->AllocateBuffer(o.small_bytes));
  }
  KVASIR_ASSIGN_OR_RETURN(
      absl::Duration get_wall, RunConcurrently(n, [&](int c) -> absl::Status {
        if (stored[c] == 0) return absl::InternalError("no block stored to read");
        const absl::Time start = absl::Now();
        for (size_t j = 0; absl::Now() - start < o.small_time; j = (j + 1) % stored[c]) {
          const absl::Time t0 = absl::Now();
          KVASIR_RETURN_IF_ERROR(clients[c]->Get(keys[c][j], buffers[c]).status());
          latencies[c].push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
        }
        return absl::OkStatus();
      }));
  summarize("get", get_wall);
  for (int c = 0; c < n; ++c) KVASIR_RETURN_IF_ERROR(RemoveAll(*clients[c], keys[c]));
  return absl::OkStatus();
}

// redis-benchmark's CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
absl::Status RunRedis(const CachestoreBenchOptions& o, CachestoreBenchResult& result) {
  KVASIR_ASSIGN_OR_RETURN(uint16_t port, FreeLoopbackPort());
  KVASIR_ASSIGN_OR_RETURN(
      ChildProcess server,
      ChildProcess::Spawn({o.redis_server, "--port", std::to_string(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--daemonize", "no"}));
  for (int c : o.clients) {
    const int requests = o.redis_requests * std::max(1, c / 4 + 1);
    absl::StatusOr<std::vector<std::string>> lines = absl::UnavailableError("not run");
    for (int attempt = 0; attempt < 20; ++attempt) {
      absl::SleepFor(absl::Milliseconds(100));  // let the server listen
      KVASIR_ASSIGN_OR_RETURN(
          ChildProcess bench,
          ChildProcess::Spawn({o.redis_benchmark, "-h", "127.0.0.1", "-p", std::to_string(port),
                               "-t", "set,get", "-d", std::to_string(o.small_bytes), "-c",
                               std::to_string(c), "-n", std::to_string(requests), "--csv"}));
      std::vector<std::string> out;
      while (true) {
        absl::StatusOr<std::string> line = bench.ReadLine(absl::Seconds(120));
        if (!line.ok()) break;
        out.push_back(*line);
      }
      KVASIR_ASSIGN_OR_RETURN(int code, bench.Wait(absl::Seconds(10)));
      if (code == 0 && out.size() >= 3) {
        lines = std::move(out);
        break;
      }
    }
    KVASIR_RETURN_IF_ERROR(Annotate(lines.status(), "redis-benchmark"));
    for (const std::string& line : *lines) {
      std::vector<std::string> f = absl::StrSplit(line, ',');
      if (f.size() < 7) continue;
      for (std::string& x : f) x.erase(std::remove(x.begin(), x.end(), '"'), x.end());
      double rps = 0, p50 = 0, p99 = 0;
      if (!absl::SimpleAtod(f[1], &rps) || !absl::SimpleAtod(f[4], &p50) ||
          !absl::SimpleAtod(f[6], &p99)) {
        continue;  // the header line
      }
      const std::string op = f[0] == "SET" ? "set" : f[0] == "GET" ? "get" : "";
      if (op.empty()) continue;
      result.redis.push_back({op, c, rps, p50 * 1000, p99 * 1000});
    }
  }
  server.Signal(SIGTERM);
  (void)server.Wait(absl::Seconds(5));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CachestoreBenchResult> RunCachestoreBench(const CachestoreBenchOptions& o) {
  if (o.sizes.empty() || o.clients.empty()) return absl::InvalidArgumentError("nothing to run");
  for (uint64_t s : o.sizes) {
    if (s < 4096 || s > (64u << 20)) {
      return absl::InvalidArgumentError("block sizes must be in 4 KiB .. 64 MiB");
    }
  }
  for (int c : o.clients) {
    if (c < 1 || c > 64) return absl::InvalidArgumentError("clients must be in 1..64");
  }
  CachestoreBenchResult result;
  KVASIR_ASSIGN_OR_RETURN(Store store, StartOrFindStore(o));
  uint64_t prefix = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));  // fresh keys per run
  for (int n : o.clients) {
    KVASIR_ASSIGN_OR_RETURN(auto clients, ConnectClients(o, store, n));
    result.data_path = clients[0]->data_path();
    for (uint64_t size : o.sizes) {
      KVASIR_RETURN_IF_ERROR(Annotate(MeasureBandwidth(o, clients, size, ++prefix, result),
                                      absl::StrCat(size, "-byte blocks, ", n, " clients")));
    }
    KVASIR_RETURN_IF_ERROR(Annotate(MeasureSmallOps(o, clients, ++prefix, result),
                                    absl::StrCat("small blocks, ", n, " clients")));
  }
  if (store.process) {
    store.process->Signal(SIGTERM);
    (void)store.process->Wait(absl::Seconds(10));
  }
  if (o.redis) KVASIR_RETURN_IF_ERROR(RunRedis(o, result));
  return result;
}

nlohmann::json CachestoreBenchJson(const CachestoreBenchResult& r) {
  auto points = [](const std::vector<BandwidthPoint>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const BandwidthPoint& p : v) {
      a.push_back({{"bytes", p.bytes}, {"clients", p.clients}, {"gbps", p.gbps}});
    }
    return a;
  };
  auto ops = [](const std::vector<SmallOpsPoint>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const SmallOpsPoint& p : v) {
      a.push_back({{"clients", p.clients},
                   {"ops_per_s", p.ops_per_s},
                   {"p50_us", p.p50_us},
                   {"p99_us", p.p99_us},
                   {"op", p.op}});
    }
    return a;
  };
  nlohmann::json out;
  out["put"] = points(r.put);
  out["get"] = points(r.get);
  out["small_ops"] = ops(r.small_ops);
  out["raw_ucx_get"] = points(r.raw_get);
  out["data_path"] = r.data_path;
  if (!r.redis.empty()) out["redis"] = ops(r.redis);
  return out;
}

std::string CachestoreBenchTable(const CachestoreBenchResult& r) {
  std::string out = absl::StrFormat("cachestore bench, data path %s\n", r.data_path);
  absl::StrAppendFormat(&out, "%10s %8s %10s %10s %14s %10s\n", "bytes", "clients", "put GB/s",
                        "get GB/s", "raw UCX GB/s", "get/raw");
  for (size_t i = 0; i < r.put.size(); ++i) {
    const BandwidthPoint& p = r.put[i];
    double get = 0;
    for (const BandwidthPoint& g : r.get) {
      if (g.bytes == p.bytes && g.clients == p.clients) get = g.gbps;
    }
    std::string raw = "-", ratio = "-";
    for (const BandwidthPoint& g : r.raw_get) {
      if (g.bytes == p.bytes && g.clients == p.clients && g.gbps > 0) {
        raw = absl::StrFormat("%.3f", g.gbps);
        ratio = absl::StrFormat("%.2f", get / g.gbps);
      }
    }
    absl::StrAppendFormat(&out, "%10d %8d %10.3f %10.3f %14s %10s\n", p.bytes, p.clients, p.gbps,
                          get, raw, ratio);
  }
  absl::StrAppendFormat(&out, "\nsmall blocks: %-10s %8s %12s %10s %10s\n", "op", "clients",
                        "ops/s", "p50 us", "p99 us");
  for (const SmallOpsPoint& p : r.small_ops) {
    absl::StrAppendFormat(&out, "  cachestore  %-10s %8d %12.0f %10.1f %10.1f\n", p.op, p.clients,
                          p.ops_per_s, p.p50_us, p.p99_us);
  }
  for (const SmallOpsPoint& p : r.redis) {
    absl::StrAppendFormat(&out, "  redis       %-10s %8d %12.0f %10.1f %10.1f\n", p.op, p.clients,
                          p.ops_per_s, p.p50_us, p.p99_us);
  }
  return out;
}

}  // namespace kvasir::cachestore
