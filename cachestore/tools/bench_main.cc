// kvasir-cachestore-bench: runs `kvasir bench cachestore` (cachestore/bench.h) without the CLI, for
// the docs' measurements and for machines where only the cachestore is built.
//   kvasir-cachestore-bench [--store HOST:PORT] [--json] [--redis] [--ucx-tls LIST] [--rpc]
//                           [--verify] [--time-ms N]
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "cachestore/bench.h"

int main(int argc, char** argv) {
  kvasir::cachestore::CachestoreBenchOptions o;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    int64_t ms = 0;
    if (arg == "--json") {
      json = true;
    } else if (arg == "--redis") {
      o.redis = true;
    } else if (arg == "--rpc") {
      o.data_path = kvasir::cachestore::DataPath::kRpc;
    } else if (arg == "--verify") {
      o.verify_reads = true;
    } else if (arg == "--store" && value(&o.store)) {
    } else if (arg == "--ucx-tls" && value(&o.ucx_tls)) {
    } else if (arg == "--time-ms" && value(&v) && absl::SimpleAtoi(v, &ms) && ms > 0) {
      o.time_per_point = absl::Milliseconds(ms);
    } else if (arg == "--help") {
      std::puts(
          "usage: kvasir-cachestore-bench [--store HOST:PORT] [--json] [--redis] "
          "[--ucx-tls LIST] [--rpc] [--verify] [--time-ms N]");
      return 0;
    } else {
      std::fprintf(stderr, "kvasir-cachestore-bench: bad argument '%s' (try --help)\n",
                   arg.c_str());
      return 2;
    }
  }
  auto r = kvasir::cachestore::RunCachestoreBench(o);
  if (!r.ok()) {
    std::fprintf(stderr, "kvasir-cachestore-bench: %s\n", r.status().ToString().c_str());
    return 1;
  }
  if (json) {
    std::cout << kvasir::cachestore::CachestoreBenchJson(*r).dump() << "\n";
  } else {
    std::cout << kvasir::cachestore::CachestoreBenchTable(*r);
  }
  return 0;
}
