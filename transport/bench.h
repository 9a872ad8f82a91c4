// `kvasir bench transport`: UCX put and get bandwidth by message size on one transport (tcp or
// shm) against a peer process, RPC round-trip latency and message rate against the same peer, and
// optionally ucx_perftest's put bandwidth on the same transport and sizes, measured in the same
// run, for the ratio. The peer is the kvasir-transport-peer binary (started with fork + exec).
//
//   KVASIR_ASSIGN_OR_RETURN(TransportBenchResult r, RunTransportBench({.tls = "shm"}));
//   std::cout << TransportBenchJson(r).dump() << "\n";
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace kvasir::transport {

struct TransportBenchOptions {
  std::string tls = "tcp";  // "tcp" or "shm" (UCX_TLS for both sides and for ucx_perftest)
  // Message sizes in bytes (default 64 KiB .. 16 MiB, powers of 4).
  std::vector<uint64_t> sizes = {64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20};
  absl::Duration time_per_point = absl::Milliseconds(400);  // measuring time per (op, size)
  absl::Duration rpc_time = absl::Milliseconds(500);        // per RPC measurement
  int rpc_threads = 4;                                      // concurrent callers for msgs/s
  // kvasir-transport-peer; "" = next to the running binary, then build/bin.
  std::string peer_binary;
  // Also run ucx_perftest (ucp_put_bw) at these sizes; empty = skip.
  std::vector<uint64_t> perftest_sizes;
  std::string perftest_binary = "/usr/bin/ucx_perftest";
};

struct UcxBenchPoint {
  std::string op;  // "put", "get", or "perftest_put"
  uint64_t bytes = 0;
  double gbps = 0;  // 10^9 bytes per second
};

struct TransportBenchResult {
  std::string tls;
  std::string lanes;  // what UCX chose for the connection (ucp_ep_print_info, condensed)
  std::vector<UcxBenchPoint> ucx;
  std::vector<UcxBenchPoint> perftest;  // ucx_perftest at perftest_sizes (op "put")
  double rpc_p50_us = 0;
  double rpc_p99_us = 0;
  double rpc_msgs_per_s = 0;
};

absl::StatusOr<TransportBenchResult> RunTransportBench(const TransportBenchOptions& options);

// {"tls": ..., "ucx": [{"op", "bytes", "gbps"}...], "rpc": {"p50_us", "p99_us", "msgs_per_s"}},
// plus "ucx_perftest": [...] when ucx_perftest ran.
nlohmann::json TransportBenchJson(const TransportBenchResult& result);
// A human-readable table.
std::string TransportBenchTable(const TransportBenchResult& result);

// ucx_perftest `test` (e.g. "ucp_put_bw") at `bytes` on `tls`, server and client on loopback;
// returns 10^9 bytes per second. Exposed for the docs' measurement and tests.
absl::StatusOr<double> RunUcxPerftest(const std::string& binary, const std::string& tls,
                                      const std::string& test, uint64_t bytes, int iterations);

}  // namespace kvasir::transport
