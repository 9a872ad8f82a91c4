// `kvasir bench cachestore`: put and get GB/s of 64 KiB .. 16 MiB blocks, and operations per
// second with p50/p99 latency for small (4 KiB) blocks, each with 1 and 8 concurrent clients,
// against a running store (--store HOST:PORT) or one it starts (build/bin/kvasir-cachestore).
// In the same run it measures raw UCX get bandwidth from the store's own exported memory on the
// same endpoints with the same batch shape, so the ratio store/raw shows the control plane's cost,
// and optionally redis-benchmark against a local redis-server at the same value size and
// concurrency.
//
//   KVASIR_ASSIGN_OR_RETURN(CachestoreBenchResult r, RunCachestoreBench({}));
//   std::cout << CachestoreBenchJson(r).dump() << "\n";
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachestore/client.h"
#include "nlohmann/json.hpp"

namespace kvasir::cachestore {

struct CachestoreBenchOptions {
  std::string store;         // "HOST:PORT" of a running store; "" = start one
  std::string store_binary;  // "" = kvasir-cachestore next to this binary, then build/bin
  std::vector<uint64_t> sizes = {64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20};
  std::vector<int> clients = {1, 8};
  // Per (op, size, clients): puts run whole rounds until this much time is spent (3 at least),
  // gets and raw gets alternate in 10 slices of a tenth of it; each figure is the median.
  absl::Duration time_per_point = absl::Seconds(1);
  uint64_t bytes_per_point = 64 << 20;  // distinct block bytes per (size, clients), at least
  uint64_t small_bytes = 4096;
  absl::Duration small_time = absl::Seconds(1);  // per (op, clients)
  int small_blocks_per_client = 4096;            // distinct small blocks each client puts
  DataPath data_path = DataPath::kAuto;
  std::string ucx_tls;        // for the started store and the clients ("" = UCX's choice)
  bool verify_reads = false;  // the codec verifies blocks when they are decoded; see docs
  // Also run redis-benchmark (SET/GET, same value size and client counts) against a
  // redis-server started on a free port.
  bool redis = false;
  std::string redis_server = "/usr/bin/redis-server";
  std::string redis_benchmark = "/usr/bin/redis-benchmark";
  int redis_requests = 20000;  // per (op, clients); times the client count over 1
};

struct BandwidthPoint {
  uint64_t bytes = 0;  // block size
  int clients = 0;
  double gbps = 0;  // 10^9 bytes per second, all clients together
};

struct SmallOpsPoint {
  std::string op;  // "put", "get" (cachestore); "set", "get" (redis)
  int clients = 0;
  double ops_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
};

struct CachestoreBenchResult {
  std::string data_path;  // "ucx[...]" or "rpc"
  std::vector<BandwidthPoint> put, get;
  std::vector<BandwidthPoint> raw_get;  // UCX gets of the store's arenas, no control plane
  std::vector<SmallOpsPoint> small_ops;
  std::vector<SmallOpsPoint> redis;  // empty unless options.redis
};

absl::StatusOr<CachestoreBenchResult> RunCachestoreBench(const CachestoreBenchOptions& options);

// {"put": [{"bytes", "clients", "gbps"}...], "get": [...], "small_ops": [{"clients",
// "ops_per_s", "p50_us", "p99_us", "op"}...]}, plus "raw_ucx_get", "data_path" and, when run,
// "redis".
nlohmann::json CachestoreBenchJson(const CachestoreBenchResult& result);
// A human-readable table (with the get/raw ratio and the Redis figures side by side).
std::string CachestoreBenchTable(const CachestoreBenchResult& result);

}  // namespace kvasir::cachestore
