// The transport bench (see bench.h).
#include "transport/bench.h"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "transport/child_process.h"
#include "transport/peer_service.h"
#include "transport/rpc/client.h"
#include "transport/transport.pb.h"
#include "transport/ucx/ucx_transport.h"

namespace kvasir::transport {
namespace {

// Condenses ucp_ep_print_info to the distinct "transport/device" pairs it names.
std::string Lanes(const std::string& info) {
  std::set<std::string> found;
  for (absl::string_view token :
       absl::StrSplit(info, absl::ByAnyChar(" \t\n,()"), absl::SkipEmpty())) {
    const size_t slash = token.find('/');
    if (slash == absl::string_view::npos || slash == 0 || slash + 1 == token.size()) continue;
    if (token.find_first_of("0123456789") == 0) continue;
    found.emplace(token);
  }
  std::string out;
  for (const std::string& f : found) absl::StrAppend(&out, out.empty() ? "" : " ", f);
  return out;
}

// Moves `size`-byte messages (put or get) for about `duration`; returns 10^9 bytes per second.
// Each call carries up to 64 messages (at most 4 MiB) and waits for all of them, like a window of
// outstanding operations followed by a flush.
absl::StatusOr<double> MeasureRma(BulkTransport& transport, PeerId peer, const RemoteRegion& remote,
                                  std::span<std::byte> local, uint64_t size, bool put,
                                  absl::Duration duration) {
  const uint64_t per_call = std::clamp<uint64_t>((4u << 20) / size, 1, 64);
  const uint64_t slots = std::max<uint64_t>(1, std::min(local.size(), remote.size_bytes) / size);
  std::vector<RmaOp> ops(per_call);
  for (uint64_t i = 0; i < per_call; ++i) {
    const uint64_t slot = i % slots;
    ops[i] = RmaOp{local.subspan(slot * size, size), slot * size};
  }
  // Warm up (registration caches, wire-up of the lanes).
  KVASIR_RETURN_IF_ERROR(put ? transport.Put(peer, remote, ops, absl::Seconds(30))
                             : transport.Get(peer, remote, ops, absl::Seconds(30)));
  uint64_t bytes = 0;
  int calls = 0;
  const absl::Time start = absl::Now();
  absl::Duration elapsed;
  do {
    KVASIR_RETURN_IF_ERROR(put ? transport.Put(peer, remote, ops, absl::Seconds(30))
                               : transport.Get(peer, remote, ops, absl::Seconds(30)));
    bytes += per_call * size;
    ++calls;
    elapsed = absl::Now() - start;
  } while (elapsed < duration || calls < 3);
  return static_cast<double>(bytes) / absl::ToDoubleSeconds(elapsed) / 1e9;
}

}  // namespace

absl::StatusOr<double> RunUcxPerftest(const std::string& binary, const std::string& tls,
                                      const std::string& test, uint64_t bytes, int iterations) {
  KVASIR_ASSIGN_OR_RETURN(uint16_t port, FreeLoopbackPort());
  const std::map<std::string, std::string> env = {{"UCX_TLS", tls}};
  KVASIR_ASSIGN_OR_RETURN(ChildProcess server,
                          ChildProcess::Spawn({binary, "-p", std::to_string(port)}, env));
  const std::vector<std::string> client_args = {
      binary, "127.0.0.1",
      "-p",   std::to_string(port),
      "-t",   test,
      "-s",   std::to_string(bytes),
      "-n",   std::to_string(iterations),
      "-w",   std::to_string(std::max(2, iterations / 10)),
      "-f",   "-v"};
  for (int attempt = 0; attempt < 20; ++attempt) {
    absl::SleepFor(absl::Milliseconds(100));  // let the server listen
    KVASIR_ASSIGN_OR_RETURN(ChildProcess client, ChildProcess::Spawn(client_args, env));
    std::string last;
    while (true) {
      absl::StatusOr<std::string> line = client.ReadLine(absl::Seconds(120));
      if (!line.ok()) break;
      if (!line->empty()) last = *line;
    }
    KVASIR_ASSIGN_OR_RETURN(int code, client.Wait(absl::Seconds(10)));
    if (code != 0) continue;  // most likely the server was not listening yet
    // CSV: iterations,50.0_percentile_lat,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr
    std::vector<std::string> fields = absl::StrSplit(last, ',');
    double overall_mb = 0;
    if (fields.size() < 6 || !absl::SimpleAtod(fields[5], &overall_mb)) {
      return absl::InternalError(absl::StrCat("cannot parse ucx_perftest output: ", last));
    }
    (void)server.Wait(absl::Seconds(10));
    return overall_mb * 1048576.0 / 1e9;  // ucx_perftest's MB are 2^20 bytes
  }
  return absl::UnavailableError("ucx_perftest client could not run");
}

absl::StatusOr<TransportBenchResult> RunTransportBench(const TransportBenchOptions& options) {
  if (options.sizes.empty()) return absl::InvalidArgumentError("no message sizes");
  const uint64_t max_size = *std::max_element(options.sizes.begin(), options.sizes.end());
  if (max_size == 0 || max_size > (1u << 30)) {
    return absl::InvalidArgumentError("message sizes must be in 1 B .. 1 GiB");
  }
  TransportBenchResult result;
  result.tls = options.tls;

  KVASIR_ASSIGN_OR_RETURN(
      ChildProcess peer,
      ChildProcess::Spawn(
          {FindSiblingBinary(options.peer_binary, "kvasir-transport-peer"), "--mode=serve"}));
  KVASIR_ASSIGN_OR_RETURN(std::string line, peer.ReadLine(absl::Seconds(20)));
  uint32_t port = 0;
  absl::string_view port_text = line;
  if (!absl::ConsumePrefix(&port_text, "PORT ") || !absl::SimpleAtoi(port_text, &port) ||
      port == 0 || port > 65535) {
    return absl::InternalError(absl::StrCat("peer printed '", line, "' instead of its port"));
  }
  KVASIR_ASSIGN_OR_RETURN(auto client,
                          rpc::RpcClient::Create({.port = static_cast<uint16_t>(port),
                                                  .handshake = TransportTestHandshake("bench")}));
  KVASIR_RETURN_IF_ERROR(client->WaitConnected(absl::Seconds(10)));

  {  // UCX bandwidth.
    BulkPeerRequest request;
    request.set_region_size(max_size);
    request.set_tls(options.tls);
    request.set_busy_poll(true);  // like ucx_perftest's server, the peer progresses continuously
    BulkPeerInfo info;
    KVASIR_RETURN_IF_ERROR(
        rpc::CallProto(*client, "peer.Bulk", request, &info, {.timeout = absl::Seconds(20)}));
    KVASIR_ASSIGN_OR_RETURN(auto transport, ucx::UcxTransport::Create({.tls = options.tls}));
    KVASIR_ASSIGN_OR_RETURN(auto allocated, transport->AllocateMemory(max_size));
    const std::span<std::byte> local = allocated.second;
    std::fill(local.begin(), local.end(), std::byte{0x5a});
    KVASIR_ASSIGN_OR_RETURN(PeerId ucx_peer, transport->Connect(info.address()));
    const RemoteRegion remote{info.region_address(), info.region_size(), info.region_key()};
    for (const char* op : {"put", "get"}) {
      for (uint64_t size : options.sizes) {
        KVASIR_ASSIGN_OR_RETURN(double gbps, MeasureRma(*transport, ucx_peer, remote, local, size,
                                                        op[0] == 'p', options.time_per_point));
        result.ucx.push_back({op, size, gbps});
      }
    }
    absl::StatusOr<std::string> described = transport->DescribePeer(ucx_peer);
    if (described.ok()) result.lanes = Lanes(*described);
    KVASIR_LOG_SUBSYS(DEBUG, kTransport, "ucx lanes:\n%s", described.ok() ? *described : "?");
    transport->Stop();
  }

  {  // RPC round trips, one caller.
    const std::string payload(64, 'x');
    std::vector<double> latencies_us;
    const absl::Time start = absl::Now();
    while (absl::Now() - start < options.rpc_time || latencies_us.size() < 100) {
      const absl::Time t0 = absl::Now();
      KVASIR_RETURN_IF_ERROR(client->Call("echo", payload, {.timeout = absl::Seconds(5)}).status());
      latencies_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
    result.rpc_p50_us = Percentile(latencies_us, 0.50);
    result.rpc_p99_us = Percentile(latencies_us, 0.99);
  }
  {  // RPC message rate, several callers.
    std::atomic<int64_t> done{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    const absl::Time start = absl::Now();
    for (int t = 0; t < std::max(1, options.rpc_threads); ++t) {
      threads.emplace_back([&] {
        const std::string payload(64, 'y');
        while (absl::Now() - start < options.rpc_time && !failed.load()) {
          if (!client->Call("echo", payload, {.timeout = absl::Seconds(5)}).ok()) failed = true;
          done.fetch_add(1);
        }
      });
    }
    for (auto& t : threads) t.join();
    if (failed.load()) return absl::UnavailableError("rpc calls failed during the bench");
    result.rpc_msgs_per_s =
        static_cast<double>(done.load()) / absl::ToDoubleSeconds(absl::Now() - start);
  }
  client->Stop();
  peer.Signal(SIGTERM);
  (void)peer.Wait(absl::Seconds(5));

  for (uint64_t size : options.perftest_sizes) {
    const int iterations = static_cast<int>(std::clamp<uint64_t>((256u << 20) / size, 20, 2000));
    KVASIR_ASSIGN_OR_RETURN(double gbps, RunUcxPerftest(options.perftest_binary, options.tls,
                                                        "ucp_put_bw", size, iterations));
    result.perftest.push_back({"put", size, gbps});
  }
  return result;
}

nlohmann::json TransportBenchJson(const TransportBenchResult& result) {
  nlohmann::json out;
  out["tls"] = result.tls;
  out["ucx"] = nlohmann::json::array();
  for (const UcxBenchPoint& p : result.ucx) {
    out["ucx"].push_back({{"op", p.op}, {"bytes", p.bytes}, {"gbps", p.gbps}});
  }
  out["rpc"] = {{"p50_us", result.rpc_p50_us},
                {"p99_us", result.rpc_p99_us},
                {"msgs_per_s", result.rpc_msgs_per_s}};
  if (!result.perftest.empty()) {
    out["ucx_perftest"] = nlohmann::json::array();
    for (const UcxBenchPoint& p : result.perftest) {
      out["ucx_perftest"].push_back({{"op", p.op}, {"bytes", p.bytes}, {"gbps", p.gbps}});
    }
  }
  return out;
}

std::string TransportBenchTable(const TransportBenchResult& result) {
  std::string out = absl::StrFormat("transport bench, UCX_TLS=%s (lanes: %s)\n", result.tls,
                                    result.lanes.empty() ? "?" : result.lanes);
  absl::StrAppendFormat(&out, "%-6s %12s %10s %14s %8s\n", "op", "bytes", "GB/s", "perftest GB/s",
                        "ratio");
  for (const UcxBenchPoint& p : result.ucx) {
    std::string perftest = "-", ratio = "-";
    for (const UcxBenchPoint& q : result.perftest) {
      if (p.op == "put" && q.bytes == p.bytes && q.gbps > 0) {
        perftest = absl::StrFormat("%.3f", q.gbps);
        ratio = absl::StrFormat("%.2f", p.gbps / q.gbps);
      }
    }
    absl::StrAppendFormat(&out, "%-6s %12d %10.3f %14s %8s\n", p.op, p.bytes, p.gbps, perftest,
                          ratio);
  }
  absl::StrAppendFormat(&out, "rpc round trip: p50 %.1f us, p99 %.1f us; %.0f msgs/s\n",
                        result.rpc_p50_us, result.rpc_p99_us, result.rpc_msgs_per_s);
  return out;
}

}  // namespace kvasir::transport
