// kvasir-transport-peer: the other process of the transport's multi-process tests and bench.
//   --mode=serve                 serve PeerService; print "PORT <n>", run until SIGTERM/SIGINT
//   --mode=gloo --rank=R --size=N --port=P [--group=G] [--timeout_ms=T] [--absent_rank=K]
//                                join a Gloo group through the rendezvous at 127.0.0.1:P and
//                                check every collective's result exactly; with --absent_rank,
//                                rank K leaves and the others must fail within the timeout.
//                                Exit 0 when everything held.
//   --mode=bench --tls=tcp|shm [--json] [--perftest]
//                                run the transport bench (what `kvasir bench transport` calls)
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/base/half.h"
#include "transport/bench.h"
#include "transport/collectives/gloo_communicator.h"
#include "transport/collectives/rendezvous.h"
#include "transport/peer_service.h"
#include "transport/rpc/client.h"

namespace kvasir::transport {
namespace {

using Flags = std::map<std::string, std::string>;

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) continue;
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) {
      flags[arg.substr(2)] = "true";
    } else {
      flags[arg.substr(2, eq - 2)] = arg.substr(eq + 1);
    }
  }
  return flags;
}

int IntFlag(const Flags& flags, const std::string& name, int fallback) {
  auto it = flags.find(name);
  int v = fallback;
  if (it != flags.end() && !absl::SimpleAtoi(it->second, &v)) {
    std::fprintf(stderr, "bad --%s=%s\n", name.c_str(), it->second.c_str());
    std::exit(2);
  }
  return v;
}

int Serve() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts
  absl::StatusOr<std::unique_ptr<PeerService>> peer =
      PeerService::Start(TransportTestHandshake("peer"));
  if (!peer.ok()) {
    std::fprintf(stderr, "peer: %s\n", peer.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %d\n", (*peer)->port());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  (*peer)->Stop();
  return 0;
}

bool Fail(int rank, const std::string& what) {
  std::fprintf(stderr, "gloo rank %d: %s\n", rank, what.c_str());
  return false;
}

// Runs each collective once and checks the exact results.
bool CheckCollectives(collectives::Communicator& comm) {
  const int rank = comm.rank(), size = comm.size();
  constexpr int kCount = 4099;  // not a multiple of anything Gloo chunks by
  std::vector<float> f32(kCount);
  for (int i = 0; i < kCount; ++i) f32[i] = static_cast<float>((rank + 1) * (i + 1));
  if (absl::Status s = comm.AllReduceSum(std::as_writable_bytes(std::span(f32)), DType::kF32);
      !s.ok()) {
    return Fail(rank, s.ToString());
  }
  for (int i = 0; i < kCount; ++i) {
    const float want = static_cast<float>((i + 1) * size * (size + 1) / 2);
    if (f32[i] != want) {
      return Fail(rank, "f32 sum at " + std::to_string(i) + ": " + std::to_string(f32[i]) +
                            " != " + std::to_string(want));
    }
  }
  std::vector<uint16_t> bf16(kCount);
  for (int i = 0; i < kCount; ++i)
    bf16[i] = Fp32ToBf16(static_cast<float>((rank + 1) * (i % 8 + 1)));
  if (absl::Status s = comm.AllReduceSum(std::as_writable_bytes(std::span(bf16)), DType::kBF16);
      !s.ok()) {
    return Fail(rank, s.ToString());
  }
  for (int i = 0; i < kCount; ++i) {
    const float want = static_cast<float>((i % 8 + 1) * size * (size + 1) / 2);
    if (Bf16ToFp32(bf16[i]) != want) return Fail(rank, "bf16 sum at " + std::to_string(i));
  }
  std::vector<std::byte> mine(33, static_cast<std::byte>(rank + 1)), all(33 * size);
  if (absl::Status s = comm.AllGather(mine, all); !s.ok()) return Fail(rank, s.ToString());
  for (int r = 0; r < size; ++r) {
    for (int i = 0; i < 33; ++i) {
      if (all[r * 33 + i] != static_cast<std::byte>(r + 1)) return Fail(rank, "all-gather");
    }
  }
  const int root = size - 1;
  std::vector<std::byte> data(1000, static_cast<std::byte>(rank == root ? 0xab : 0));
  if (absl::Status s = comm.Broadcast(data, root); !s.ok()) return Fail(rank, s.ToString());
  for (std::byte b : data) {
    if (b != std::byte{0xab}) return Fail(rank, "broadcast");
  }
  if (absl::Status s = comm.Barrier(); !s.ok()) return Fail(rank, s.ToString());
  return true;
}

int Gloo(const Flags& flags) {
  const int rank = IntFlag(flags, "rank", 0), size = IntFlag(flags, "size", 1);
  const int port = IntFlag(flags, "port", 0);
  const int absent = IntFlag(flags, "absent_rank", -1);
  const absl::Duration timeout = absl::Milliseconds(IntFlag(flags, "timeout_ms", 20000));
  const std::string group = flags.contains("group") ? flags.at("group") : "test";
  auto client = rpc::RpcClient::Create(
      {.port = static_cast<uint16_t>(port), .handshake = TransportTestHandshake("rank")});
  if (!client.ok()) return Fail(rank, client.status().ToString()), 1;
  collectives::RpcRendezvousStore store(**client);
  auto comm = collectives::GlooCommunicator::Create(
      {.rank = rank, .size = size, .store = &store, .key_prefix = group, .timeout = timeout});
  if (!comm.ok()) return Fail(rank, comm.status().ToString()), 1;
  if (absent < 0) return CheckCollectives(**comm) ? 0 : 1;
  // A rank goes missing: it leaves once every other rank has connected (so that they lose it in
  // the all-reduce, not while still connecting); every other rank must get an error within the
  // timeout.
  const std::string connected_key = group + "/connected/";
  if (rank == absent) {
    for (int r = 0; r < size; ++r) {
      if (r == absent) continue;
      auto s = store.Get(connected_key + std::to_string(r), absl::Seconds(60));
      if (!s.ok()) return Fail(rank, s.status().ToString()), 1;
    }
    return 0;
  }
  if (absl::Status s = store.Set(connected_key + std::to_string(rank), "1"); !s.ok()) {
    return Fail(rank, s.ToString()), 1;
  }
  std::vector<float> x(1024, 1.0f);
  const absl::Time start = absl::Now();
  absl::Status s = (*comm)->AllReduceSum(std::as_writable_bytes(std::span(x)), DType::kF32);
  const absl::Duration took = absl::Now() - start;
  if (s.ok()) return Fail(rank, "all-reduce succeeded without a rank"), 1;
  if (!absl::IsDeadlineExceeded(s) && !absl::IsUnavailable(s)) {
    return Fail(rank, "unexpected error " + s.ToString()), 1;
  }
  if (took > timeout + absl::Seconds(2)) return Fail(rank, "error came too late"), 1;
  std::fprintf(stderr, "gloo rank %d: expected failure: %s\n", rank, s.ToString().c_str());
  return 0;
}

int Bench(const Flags& flags) {
  TransportBenchOptions options;
  if (flags.contains("tls")) options.tls = flags.at("tls");
  if (flags.contains("perftest")) options.perftest_sizes = {1 << 20, 16 << 20};
  absl::StatusOr<TransportBenchResult> result = RunTransportBench(options);
  if (!result.ok()) {
    std::fprintf(stderr, "bench: %s\n", result.status().ToString().c_str());
    return 1;
  }
  if (flags.contains("json")) {
    std::cout << TransportBenchJson(*result).dump() << "\n";
  } else {
    std::cout << TransportBenchTable(*result);
  }
  return 0;
}

}  // namespace
}  // namespace kvasir::transport

int main(int argc, char** argv) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the test or bench that started us
  const auto flags = kvasir::transport::ParseFlags(argc, argv);
  const std::string mode = flags.contains("mode") ? flags.at("mode") : "";
  if (mode == "serve") return kvasir::transport::Serve();
  if (mode == "gloo") return kvasir::transport::Gloo(flags);
  if (mode == "bench") return kvasir::transport::Bench(flags);
  std::fprintf(stderr,
               "usage: kvasir-transport-peer --mode=serve | --mode=gloo --rank=R --size=N "
               "--port=P | --mode=bench --tls=tcp|shm [--json] [--perftest]\n");
  return 2;
}
